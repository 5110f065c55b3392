"""The one exception type the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations


class InputError(Exception):
    """Bad input from the user: a file, a name, a value. The message says what and how to fix it."""


class CheckFailed(Exception):
    """A check the user asked for failed (gates, --strict): exit code 1."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
