"""Every `robust ...` line in README.md, docs/*.md and configs/ parses with the real commands:
the command exists, every option exists, every required option is given (a `--config` on the
line counts, as it does when run), values have the right types, and a `robust eval CONFIG` line
names a config that validates. torchrun lines also pass torchrun's own parser, which reads the
options after `-m robustcli` too. Nothing is run."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import click
import pytest

from doc_commands import ROOT, DocCommand, doc_commands, parse_command

COMMANDS = doc_commands()


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # lines name configs/... relative to the repository root, as the docs say


def _check(c: DocCommand) -> None:
    try:
        ctx = parse_command(c.argv, c.complete)
    except click.exceptions.Exit:  # --help / --version
        return
    except click.ClickException as e:
        pytest.fail(f"{c.where()}\n  -> {e.format_message()}")
    if c.complete and c.argv[0] == "eval":
        from robustcli.evalconfig import load_eval_config

        path = Path(ctx.params["config_path"])
        if path.exists():  # `robust eval bad.yaml` in the docs shows the error on a made-up file
            load_eval_config(path)
    if c.torchrun is not None:
        from torch.distributed.run import get_args_parser

        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                get_args_parser().parse_args([*c.torchrun, "-m", "robustcli", *c.argv])
        except SystemExit:
            pytest.fail(f"{c.where()}\n  -> torchrun: {err.getvalue().strip().splitlines()[-1]}")


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.file}:{c.line}" for c in COMMANDS])
def test_documented_command_parses(command):
    _check(command)


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.file}:{c.line}" for c in COMMANDS])
def test_documented_command_uses_current_option_names(command):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.suppress(click.exceptions.Exit, click.ClickException):
        parse_command(command.argv, command.complete)
    assert "is deprecated" not in err.getvalue(), f"{command.where()}\n  -> {err.getvalue().strip()}"


def test_the_readme_tour_is_found_and_covers_every_command():
    from robustcli.cli import cli

    readme = [c for c in COMMANDS if c.file == "README.md" and c.complete]
    assert len(readme) >= 19
    documented = {c.argv[0] for c in COMMANDS if c.complete}
    assert set(cli.commands) <= documented


@pytest.mark.parametrize(
    "text, problem",
    [
        ("    robust train --method ibp --data mnist --out x.safetensors\n", "No such option"),
        ("    robust attack --eps 0.1\n", "Missing option '--model'"),
        ("    robust atack --model mnist-cnn\n", "No such command"),
        ("    robust attack --model mnist-cnn --eps x\n", "not a valid float"),
        ("Prose with `robust certify --spec prop.vnnlib --bogus` inline.\n", "No such option"),
        ("```\n$ torchrun --nproc-per-node 2 -m robustcli attack --model m --n 50\n```\n", "ambiguous"),
    ],
)
def test_a_broken_line_is_caught(tmp_path, text, problem):
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    found = doc_commands([doc])
    assert len(found) == 1
    with pytest.raises(pytest.fail.Exception, match=problem):
        _check(found[0])

