"""`--html` reports and `attack --png`: the page parses, every embedded image decodes, nothing is
fetched from the network, user text is escaped, and a real browser renders it (where installed)."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

from robustcli.attacks.evaluate import AttackOutcome, Evaluation
from robustcli.html_page import Page, Section, paragraph, table
from robustcli.html_report import attack_page
from robustcli.image_grid import broken_sample, grid_png


class _Page(HTMLParser):
    """Collects tags, image sources, headings and any attribute that could load something."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.headings: list[str] = []
        self.loads: list[str] = []  # src/href values
        self.tags: list[str] = []
        self._in_heading = False
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        for key in ("src", "href"):
            if key in a:
                self.loads.append(a[key])
        self._in_heading = tag in ("h1", "h2")

    def handle_endtag(self, tag):
        if tag in ("h1", "h2"):
            self._in_heading = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_heading:
            self.headings.append(data.strip())


def parse_page(path: Path) -> _Page:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    parser = _Page()
    parser.feed(text)
    parser.close()
    # self-contained: every load is an inline data: URI; the CSP forbids the rest anyway
    assert all(s.startswith("data:image/png;base64,") for s in parser.loads), parser.loads
    assert "default-src 'none'" in text
    return parser


def decode_images(page: _Page) -> list[Image.Image]:
    out = []
    for src in page.images:
        raw = base64.b64decode(src.split(",", 1)[1], validate=True)
        img = Image.open(io.BytesIO(raw))
        img.load()  # decodes every pixel: a truncated PNG fails here
        assert img.width > 50 and img.height > 50
        out.append(img)
    return out


def test_attack_html_and_png(run_cli, tmp_path):
    html, png, js = tmp_path / "r.html", tmp_path / "grid.png", tmp_path / "r.json"
    r = run_cli(
        "attack", "--model", "digits-mlp", "--attack", "fgsm", "pgd", "--eps", "0.05", "0.1", "--steps", "10",
        "--n", "60", "--html", html, "--png", png, "--json", js,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    page = parse_page(html)
    assert any("Robust accuracy" == h for h in page.headings)
    assert "Gradient-masking diagnostics" in page.headings
    assert "Broken points" in page.headings
    images = decode_images(page)
    assert len(images) == 2  # the chart and the grid
    grid = Image.open(png)
    grid.load()
    # the --png file is the same grid as the page's
    assert grid.size == images[1].size
    # the table holds the measured figures of the JSON report
    import json

    report = json.loads(js.read_text())
    text = " ".join(page.text)
    for row in report["results"]:
        assert f"{100 * row['robust_accuracy']:.1f}%" in text
    assert not list(tmp_path.glob(".*.tmp"))


def test_attack_png_without_broken_points(run_cli, tmp_path):
    png = tmp_path / "grid.png"
    r = run_cli("attack", "--model", "digits-mlp", "--attack", "fgsm", "--eps", "0", "--n", "20", "--png", png)
    assert r.exit_code == 0, r.output
    Image.open(png).load()


@pytest.mark.parametrize("flag,name", [("--html", "r.txt"), ("--png", "g.jpg"), ("--html", "missing/r.html")])
def test_bad_output_paths_exit_2_before_work(run_cli, tmp_path, flag, name):
    r = run_cli("attack", "--model", "digits-mlp", "--n", "5", flag, tmp_path / name)
    assert r.exit_code == 2
    assert "error:" in r.output and flag in r.output
    assert not list(tmp_path.iterdir())


def test_certify_html(run_cli, tmp_path):
    html = tmp_path / "c.html"
    r = run_cli(
        "certify", "--model", "digits-mlp", "--eps", "0.01", "0.05", "--n", "40", "--pgd-steps", "10", "--html", html
    )
    assert r.exit_code == 0, r.output
    page = parse_page(html)
    assert "Verified accuracy" in page.headings
    assert "Verified accuracy against eps" in page.headings
    images = decode_images(page)
    assert len(images) >= 1


def test_eval_html(run_cli, tmp_path):
    config = tmp_path / "ci.yaml"
    config.write_text(
        "model: digits-mlp\nn: 40\nchecks:\n"
        "  - name: linf\n    type: attack\n    attacks: [fgsm]\n    eps: [0.05, 0.1]\n"
        "    gates: [robust_accuracy >= 0.99 at eps=0.1, no_masking_warnings]\n"
    )
    html = tmp_path / "e.html"
    r = run_cli("eval", config, "--html", html)
    assert r.exit_code == 1  # the 0.99 gate fails; the page is still written and says so
    page = parse_page(html)
    text = " ".join(page.text)
    assert "gates failed" in text and "FAIL" in text
    assert "Gates" in page.headings
    assert any(h.startswith("Broken points: check linf") for h in page.headings)
    assert len(decode_images(page)) == 2


def _evaluation(n: int = 6) -> tuple[Evaluation, torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 8, 8)
    y = torch.zeros(n, dtype=torch.long)
    broken_small = torch.tensor([False, True, False, False, False, False])
    broken_big = torch.tensor([False, True, True, True, False, False])
    outcomes = [
        AttackOutcome("pgd", "linf", e, ~b, b, torch.where(b, e, torch.nan), 0.1, n)
        for e, b in ((0.1, broken_small), (0.3, broken_big))
    ]
    adv = {f"pgd/linf/{e:g}": (x + e).clamp(0, 1) for e in (0.1, 0.3)}
    return Evaluation(torch.ones(n, dtype=torch.bool), outcomes, adv), x, y


def test_broken_sample_takes_most_fragile_first_and_predicts():
    ev, x, y = _evaluation()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    s = broken_sample(ev, model, x, y, device=torch.device("cpu"), k=2)
    assert s.index.tolist() == [1, 2]  # point 1 broke at 0.1; then the first of those broken at 0.3
    assert s.label == ["pgd linf 0.1", "pgd linf 0.3"]
    assert torch.equal(s.x_adv[0], ev.adversarials["pgd/linf/0.1"][1])
    assert torch.equal(s.pred_adv, model(s.x_adv).argmax(1))
    png = grid_png(s)
    Image.open(io.BytesIO(png)).load()
    assert broken_sample(Evaluation(ev.clean_correct, ev.outcomes, {}), model, x, y, device=torch.device("cpu")) is None


def test_user_text_is_escaped():
    report = {
        "model": "<script>alert(1)</script>", "data": "d&d", "n": 1, "seed": 0, "clean_accuracy": 1.0,
        "results": [], "diagnostics": [], "warnings": [
            {"code": "x", "message": "<b>m</b>", "advice": "a < b", "evidence": {}}
        ],
    }  # fmt: skip
    text = attack_page(report, None).render()
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "<b>m</b>" not in text and "a &lt; b" in text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_screenshot(html: Path, tmp_path: Path) -> Path:
    """Headless Chromium, offline, loads the page and writes a 1200x2400 screenshot (the path returned)."""
    shot = tmp_path / "shot.png"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,2400", f"--screenshot={shot}", html.as_uri(),
    ]  # fmt: skip
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    return shot


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
def test_page_renders_in_headless_chromium(tmp_path):
    """A real browser loads the page offline and paints it: a screenshot with the page's colours."""
    ev, x, y = _evaluation()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    grid = grid_png(broken_sample(ev, model, x, y, device=torch.device("cpu")))
    report = {
        "model": "m", "data": "d", "n": 6, "seed": 0, "clean_accuracy": 1.0,
        "results": [o.summary() for o in ev.outcomes], "diagnostics": [], "warnings": [],
    }  # fmt: skip
    html = tmp_path / "page.html"
    html.write_text(attack_page(report, grid).render())
    shot = chromium_screenshot(html, tmp_path)
    assert shot.exists(), "chromium wrote no screenshot"
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 2400)
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, tables, charts: not a blank page
    # the grey of the grid's images is painted somewhere: the inline image decoded in the browser
    pixels = img.load()
    assert any(
        abs(pixels[i, j][0] - pixels[i, j][1]) < 3 and 60 < pixels[i, j][0] < 200
        for i in range(0, 1200, 7)
        for j in range(0, 2400, 7)
    )
