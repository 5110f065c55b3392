"""Directed rounding of float64 values to a narrower dtype.

A bound moved to float32 by rounding to nearest can end on the wrong side of the value it stands
for: a lower end of a set above the set's real edge leaves points out. These round toward the
side that keeps the statement true (`round_down` for lower ends, `round_up` for upper ends; an
inward box swaps them), by one step of the target dtype where rounding to nearest went the wrong way.
"""

from __future__ import annotations

import torch


def round_down(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The largest `dtype` values <= t (t compared in float64)."""
    r = t.to(dtype)
    below = torch.tensor(float("-inf"), dtype=dtype, device=r.device)
    return torch.where(r.double() > t.double(), torch.nextafter(r, below), r)


def round_up(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The smallest `dtype` values >= t (t compared in float64)."""
    r = t.to(dtype)
    above = torch.tensor(float("inf"), dtype=dtype, device=r.device)
    return torch.where(r.double() < t.double(), torch.nextafter(r, above), r)
