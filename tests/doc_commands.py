"""Find the `robust ...` command lines in the README, docs/ and configs/, and parse them with the
real Click commands (without running them).

A *line* is a command on a line of its own: in a code block, an indented block, or a YAML comment
(`# robust eval configs/ci-example.yaml ...`); it must parse completely, required options
included (a `--config FILE` on the line supplies options the way it does when run). An *inline*
mention (`robust attack --model run.safetensors` inside a sentence) is a fragment: its command
and every option it names must exist, but it need not be complete.

Forms recognised: `robust ARGS`, `python -m robustcli ARGS`, `torchrun [torchrun options] -m
robustcli ARGS` (ARGS also go through torchrun's own parser, which reads them too), and
`python -m robustcli.launch [torchrun options] -- ARGS`; leading `$ ` and `VAR=value` words,
trailing `# comments`, `  (prose)` and `\\` continuations are handled.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DocCommand:
    file: str
    line: int
    text: str
    argv: tuple[str, ...]  # the words after `robust`
    complete: bool  # a whole line (required options must be given) or an inline fragment
    torchrun: tuple[str, ...] | None = None  # torchrun's own options, for torchrun lines

    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def doc_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += sorted(p for p in (ROOT / "configs").rglob("*") if p.suffix in (".yaml", ".yml", ".md", ".sh"))
    return files


_INLINE = re.compile(r"`((?:\$ )?(?:robust|torchrun|python -m robustcli)\b[^`]*)`")
_TRAILING = re.compile(r"(\s#.*|\s{2,}\(.*)$")


def _split(text: str) -> list[str] | None:
    text = _TRAILING.sub("", text).strip()
    try:
        return shlex.split(text)
    except ValueError:
        return None


def to_command(words: list[str]) -> tuple[tuple[str, ...], tuple[str, ...] | None] | None:
    """(robust's argv, torchrun's options or None) for a recognised command, else None."""
    while words and (words[0] == "$" or re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0])):
        words = words[1:]
    if not words:
        return None
    if words[0] == "robust":
        return tuple(words[1:]), None
    if words[0] == "torchrun" and "-m" in words:
        i = words.index("-m")
        if i + 1 < len(words) and words[i + 1] == "robustcli":
            return tuple(words[i + 2 :]), tuple(words[1:i])
        return None
    if len(words) >= 3 and words[0] in ("python", "python3", ".venv/bin/python") and words[1] == "-m":
        if words[2] == "robustcli":
            return tuple(words[3:]), None
        if words[2] == "robustcli.launch" and "--" in words:
            return tuple(words[words.index("--") + 1 :]), None
    return None


def _line_candidates(path: Path) -> list[tuple[int, str, bool]]:
    """(line number, text, complete) of each command in a file."""
    out = []
    lines = path.read_text(encoding="utf-8").splitlines()
    is_md = path.suffix == ".md"
    in_fence = False
    output_block = False  # a fenced block of printed output (box-drawn tables): only `$ ` lines are commands
    i = 0
    while i < len(lines):
        raw = lines[i]
        number = i + 1
        stripped = raw.strip()
        if is_md and stripped.startswith("```"):
            in_fence = not in_fence
            if in_fence:
                block = []
                for rest in lines[i + 1 :]:
                    if rest.strip().startswith("```"):
                        break
                    block.append(rest)
                output_block = any(ch in "".join(block) for ch in "┏│└")
            i += 1
            continue
        # a YAML or shell comment holding a command: `# robust ...`
        body = stripped.lstrip("#").strip() if stripped.startswith("#") else stripped
        if path.suffix in (".yaml", ".yml") and not stripped.startswith("#"):
            # a command inside YAML (a CI `run:` or `script:` entry): the value after `- ` or `run: `
            body = re.sub(r"^(-\s+)?(run:\s*)?", "", stripped).strip("\"'")
        if in_fence:
            code_line = not output_block or body.startswith("$ ")
        else:
            code_line = not is_md or raw.startswith("    ")
        while body.endswith("\\") and i + 1 < len(lines):
            i += 1
            body = body[:-1] + " " + lines[i].strip().lstrip("#").strip()
        if code_line and re.match(r"(\$ )?([A-Z_][A-Z0-9_]*=\S*\s+)*(robust|torchrun|python3? -m robustcli)\b", body):
            out.append((number, body, True))
        elif is_md:
            out += [(number, m.group(1), False) for m in _INLINE.finditer(raw)]
        i += 1
    return out


def doc_commands(files: list[Path] | None = None) -> list[DocCommand]:
    found = []
    for path in files or doc_files():
        for number, text, complete in _line_candidates(path):
            words = _split(text)
            if words is None:
                continue
            parsed = to_command(words)
            if parsed is None:
                continue
            argv, torchrun = parsed
            if not argv or not re.fullmatch(r"[a-z][a-z0-9-]*", argv[0]):
                continue  # `robust COMMAND --config FILE`: a pattern, not a command
            found.append(DocCommand(_relative(path), number, text, argv, complete, torchrun))
    return found


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def parse_command(argv: tuple[str, ...], complete: bool) -> click.Context:
    """Parse `robust ARGV` with the real commands, the way `robust` would, without invoking it.

    Raises click.UsageError (unknown command or option, missing value or required option)."""
    from robustcli.cli import cli

    command: click.Command = cli
    name, args, parent = "robust", list(argv), None
    while True:
        if isinstance(command, click.Group):
            ctx = command.make_context(name, args, parent=parent, resilient_parsing=not complete)
            rest = [*ctx._protected_args, *ctx.args] if hasattr(ctx, "_protected_args") else [*ctx.protected_args, *ctx.args]
            if not rest:
                return ctx
            name, sub, args = command.resolve_command(ctx, rest)
            command, parent = sub, ctx
            continue
        if complete:
            return command.make_context(name, args, parent=parent)
        # a fragment: every option it names must exist; values and required options are not checked
        known = {o for p in command.params for o in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))}
        for word in args:
            flag = word.split("=", 1)[0]
            if flag.startswith("-") and not _is_number(flag) and flag not in known:
                raise click.NoSuchOption(flag, ctx=click.Context(command, info_name=name, parent=parent))
        return click.Context(command, info_name=name, parent=parent)


def _is_number(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False
