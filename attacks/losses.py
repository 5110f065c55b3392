"""Losses that attacks maximise. Each takes logits (N, K) and labels (N,) and returns (N,)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def other_max(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """max_{i != label} Z_i, excluding the label by masking with -inf.

    Multiplying by (1 - onehot) instead (torchattacks' CW) returns 0 whenever every other logit is
    negative, which silently weakens the attack.
    """
    masked = logits.scatter(1, labels[:, None], float("-inf"))
    return masked.amax(1)


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Z_label - max_{i != label} Z_i: positive iff the label wins."""
    return logits.gather(1, labels[:, None]).squeeze(1) - other_max(logits, labels)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


def attack_loss(name: str, logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """The per-point loss an attack ascends: away from the label, or towards the target when targeted."""
    if name == "ce":
        return -cross_entropy(logits, labels) if targeted else cross_entropy(logits, labels)
    if name == "margin":
        return margin(logits, labels) if targeted else -margin(logits, labels)
    raise ValueError(f"unknown loss {name!r}; expected 'ce' or 'margin'")
