"""Where robustcli keeps what it builds on first use: built-in models and parsed datasets."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$ROBUSTCLI_CACHE`, else `$XDG_CACHE_HOME/robustcli`, else `~/.cache/robustcli`."""
    if os.environ.get("ROBUSTCLI_CACHE"):
        return Path(os.environ["ROBUSTCLI_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "robustcli"


def downloads_allowed() -> bool:
    """False when `ROBUSTCLI_OFFLINE` is set to anything but 0/false/no (the test suite sets it,
    so no test can reach the network by accident)."""
    return os.environ.get("ROBUSTCLI_OFFLINE", "").strip().lower() in ("", "0", "false", "no")
