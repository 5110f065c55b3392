"""`robust models`: the built-in models and whether they are cached."""

from __future__ import annotations

import click

from robustcli.archs import ARCHS
from robustcli.options import RobustCommand
from robustcli.report import print_table
from robustcli.zoo import builtin_path


@click.command("models", cls=RobustCommand)
def command() -> None:
    """List built-in models (trained on bundled data on first use, then cached)."""
    rows = [
        [name, spec.description, spec.dataset, "yes" if builtin_path(name).exists() else "no (trains on first use)"]
        for name, spec in ARCHS.items()
    ]
    print_table("Built-in models", ["name", "architecture", "trained on", "cached"], rows, caption=str(builtin_path("x").parent))
