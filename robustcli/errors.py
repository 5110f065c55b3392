"""The CLI's errors: `InputError` (from core) becomes exit code 2, `CheckFailed` exit code 1."""

from __future__ import annotations

from robustcli.core.errors import InputError, first_line

__all__ = ["CheckFailed", "InputError", "first_line"]


class CheckFailed(Exception):
    """A check the user asked for failed (gates, --strict): exit code 1."""
