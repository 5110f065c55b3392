"""Every option of every command can be written on a torchrun command line.

torchrun's parser (argparse) reads the whole command line, also after `-m robustcli`, and
rejects an option that abbreviates two of its own (`--n`: `--nnodes`, `--nproc-per-node`, ...)
or takes one that abbreviates exactly one of its own as that option. Each robust option needs
at least one name that reaches robust unchanged.
"""

from __future__ import annotations

import contextlib
import io
import shlex
from pathlib import Path

import click
import pytest

from robustcli.cli import cli

torch_run = pytest.importorskip("torch.distributed.run")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "distributed.md"


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def _reaches_robust(argv: list[str], robust_args: list[str]) -> bool:
    parser = torch_run.get_args_parser()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = parser.parse_args(argv)
    except SystemExit:
        return False
    return args.training_script == "robustcli" and args.training_script_args == robust_args


def test_every_option_has_a_name_torchrun_passes_through():
    missing = []
    for path, command in _commands(cli):
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            if not any(
                _reaches_robust(["--nproc-per-node", "2", "-m", "robustcli", *path, opt, "1"], [*path, opt, "1"])
                for opt in param.opts
            ):
                missing.append(f"robust {' '.join(path)} {'/'.join(param.opts)}")
    assert not missing, missing


def test_the_short_n_is_what_torchrun_refuses():
    """The check above can fail: `--n` alone does not reach robust."""
    assert not _reaches_robust(["--nproc-per-node", "2", "-m", "robustcli", "attack", "--n", "50"], ["attack", "--n", "50"])


def test_documented_torchrun_lines_parse_and_name_real_options():
    lines = [line.strip() for line in DOCS.read_text().splitlines() if line.strip().startswith(("torchrun ", "OMP_NUM_THREADS=1 torchrun "))]
    lines = [line for line in lines if not line.endswith("\\")]
    assert any("--num-points" in line for line in lines)
    for line in lines:
        argv = shlex.split(line)
        argv = argv[argv.index("torchrun") + 1 :]
        cut = argv.index("robustcli") + 1
        assert _reaches_robust(argv, argv[cut:]), line
        ctx_args = argv[cut:]
        command = cli.commands[ctx_args[0]]
        # Click parses the robust part as written: every option exists (parsing only, nothing runs)
        with command.make_context(ctx_args[0], list(ctx_args[1:])) as ctx:
            assert ctx.params
