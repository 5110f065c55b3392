"""A cooperative deadline for bound computations that can run long (CROWN rows on large inputs).

Python cannot stop a computation from outside, so long loops check the clock between parts of
their work and raise `DeadlineReached`; the verifier answers `timeout` then (VNN-COMP's rule: an
answer after the per-instance timeout does not count, so stopping is never worse than finishing).
"""

from __future__ import annotations

import time


class DeadlineReached(Exception):
    """A bound computation passed its deadline; it returns no bound."""


def check_deadline(deadline: float | None) -> None:
    """Raise `DeadlineReached` once `time.monotonic()` is past `deadline` (None: no deadline)."""
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineReached
