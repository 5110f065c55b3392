"""Per-point norms and projections over all but the batch dimension."""

from __future__ import annotations

import torch

NORMS = ("linf", "l2")


def flat_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1)
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


def per_point(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-point vector (N,) to broadcast against a batch shaped like `like`."""
    return v.view(-1, *([1] * (like.dim() - 1)))
