"""Errors engines raise. They carry no exit code: the CLI decides how to show them."""

from __future__ import annotations


class InputError(Exception):
    """Bad input: a file, a name, a value. The message says what is wrong and how to fix it."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
