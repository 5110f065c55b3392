"""Margin specifications: the matrix C whose rows e_y - e_j turn logits into margins."""

from __future__ import annotations

import torch


def other_classes(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, K-1) indices j != y in ascending order: the classes margin row s compares y against."""
    ks = torch.arange(num_classes, device=y.device).expand(len(y), num_classes)
    return ks[ks != y[:, None]].view(len(y), num_classes - 1)


def margin_spec(y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """C (N, K-1, K) with rows e_y - e_j for every j != y (auto_LiRPA's C for robustness).

    (C @ logits)[s] = Z_y - Z_j: the point is verified iff every row's lower bound is > 0.
    """
    if num_classes < 2:
        raise ValueError("a margin specification needs at least 2 classes")
    y = y.long()
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y].unsqueeze(1) - eye[other_classes(y, num_classes)]


def verified(lower: torch.Tensor) -> torch.Tensor:
    """bool (N,): every margin lower bound (N, S) is strictly positive."""
    return (lower > 0).all(1)
