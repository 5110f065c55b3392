"""The `robust` command line: parses and dispatches; the engines live in attacks/, certify/, ..."""

from __future__ import annotations

import importlib

import click

from robustcli import __version__
from robustcli.core import distributed
from robustcli.commands import COMMANDS
from robustcli.options import RobustGroup


@click.group(cls=RobustGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="robust")
def cli() -> None:
    """How robust is a PyTorch classifier? Attack it, certify it, train it to hold up.

    Exit codes: 0 success, 1 a check you asked for failed, 2 bad input or usage.
    """


for _module in COMMANDS:
    cli.add_command(importlib.import_module(_module).command)


def main() -> None:
    with distributed.session():  # joins torchrun's process group when launched by it; else a no-op
        cli(prog_name="robust")
