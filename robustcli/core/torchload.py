"""Telling a pickled-object file from a corrupt one when `torch.load(weights_only=True)` refuses it."""

from __future__ import annotations

# torch's wording differs across versions: "Unsupported global: GLOBAL x was not an allowed
# global" for classes outside the allow-list, "unsupported GLOBAL posix.system whose module posix
# is blocked" (2.6+) for blocked modules, and "safe_globals" in the advice of both. A corrupt file
# fails with other messages ("Unsupported operand", "invalid load key", ...).
_PICKLE_MARKERS = ("Unsupported global", "unsupported GLOBAL", "safe_globals")


def is_pickle_refusal(e: BaseException) -> bool:
    """Whether the file holds a pickle of Python objects (loadable only by running the pickle)."""
    text = str(e)
    return any(marker in text for marker in _PICKLE_MARKERS)
