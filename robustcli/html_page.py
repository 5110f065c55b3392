"""A self-contained HTML page: inline styles, images as base64 `data:` URIs, nothing fetched.

The page is what a reviewer opens from a CI artifact, often offline or behind a strict proxy, so
it must render from the one file. A Content-Security-Policy meta tag forbids every network load
(`default-src 'none'`), which makes "no network" a property a browser enforces, not a promise.
Every piece of text is HTML-escaped: model names, file paths and messages come from the user.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from robustcli.core.files import atomic_path

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #1f2328; background: #fff; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #eaeef2; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #d0d7de; padding: .3em .7em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f6f8fa; }
caption { caption-side: bottom; font-size: .85em; color: #57606a; text-align: left; padding-top: .3em; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: .15em 1em; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; font-family: ui-monospace, monospace; }
.ok { color: #1a7f37; font-weight: 600; } .bad { color: #cf222e; font-weight: 600; }
.warn { color: #9a6700; font-weight: 600; } .muted { color: #57606a; }
.advice { border-left: 4px solid #d4a72c; background: #fff8c5; padding: .5em .9em; margin: .6em 0; }
.banner { padding: .6em 1em; border-radius: 6px; font-weight: 600; }
.banner.ok { background: #dafbe1; } .banner.bad { background: #ffebe9; }
img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
footer { margin-top: 3em; font-size: .8em; color: #57606a; }
"""


_NUMERIC = re.compile(r"^[-+]?(\d[\d.,e+-]*|inf|nan)\s*(%|s)?$|^-$")


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None) -> str:
    """Cells are escaped text, except a (text, css_class) pair, drawn with that class."""

    def cell(v: Any, tag: str) -> str:
        text, css = v if isinstance(v, tuple) else (v, "num" if tag == "td" and _NUMERIC.match(str(v)) else "")
        return f'<{tag} class="{esc(css)}">{esc(text)}</{tag}>' if css else f"<{tag}>{esc(text)}</{tag}>"

    head = "".join(cell(c, "th") for c in columns)
    body = "\n".join("<tr>" + "".join(cell(v, "td") for v in row) + "</tr>" for row in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"


def image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def paragraph(text: str, css: str | None = None) -> str:
    return f'<p class="{esc(css)}">{esc(text)}</p>' if css else f"<p>{esc(text)}</p>"


@dataclass
class Section:
    heading: str
    body: list[str] = field(default_factory=list)  # HTML fragments built with the helpers above


@dataclass
class Page:
    title: str
    meta: list[tuple[str, Any]] = field(default_factory=list)
    banner: tuple[str, bool] | None = None  # (text, good)
    sections: list[Section] = field(default_factory=list)

    def render(self) -> str:
        meta = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in self.meta)
        banner = (
            f'<p class="banner {"ok" if self.banner[1] else "bad"}">{esc(self.banner[0])}</p>' if self.banner else ""
        )
        sections = "\n".join(
            f"<section>\n<h2>{esc(s.heading)}</h2>\n" + "\n".join(s.body) + "\n</section>" for s in self.sections
        )
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(self.title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{esc(self.title)}</h1>\n{banner}\n<dl class=\"meta\">{meta}</dl>\n{sections}\n"
            "<footer>Written by robustcli; self-contained (no network loads).</footer>\n</body>\n</html>\n"
        )


def write_page(path: str | Path, page: Page) -> None:
    """Atomically: the file is complete or absent."""
    with atomic_path(path) as tmp:
        tmp.write_text(page.render(), encoding="utf-8")
