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


def _dlr_scale(sorted_logits: torch.Tensor, low: int) -> torch.Tensor:
    """Z_pi1 - Z_pi{low}: the DLR denominator; the index is clipped for models with few classes."""
    k = sorted_logits.shape[1]
    return sorted_logits[:, 0] - sorted_logits[:, min(low, k) - 1] + 1e-12


def dlr(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Untargeted DLR loss (Croce & Hein 2020, eq. 3), to be maximised:

        -(Z_y - max_{i != y} Z_i) / (Z_pi1 - Z_pi3)

    with pi the classes sorted by decreasing logit. Invariant to shifting and scaling the logits,
    so a saturated softmax cannot hide the gradient. Choice: with fewer than 3 classes the
    denominator uses the lowest logit instead of the third.
    """
    srt = logits.sort(1, descending=True).values
    return -margin(logits, labels) / _dlr_scale(srt, 3)


def dlr_targeted(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss (Croce & Hein 2020, eq. 4), to be maximised:

        -(Z_y - Z_t) / (Z_pi1 - (Z_pi3 + Z_pi4) / 2)

    Choice: with fewer than 4 classes the missing ranks are clipped to the lowest logit.
    """
    srt = logits.sort(1, descending=True).values
    k = srt.shape[1]
    scale = srt[:, 0] - 0.5 * (srt[:, min(3, k) - 1] + srt[:, min(4, k) - 1]) + 1e-12
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    z_t = logits.gather(1, targets[:, None]).squeeze(1)
    return -(z_y - z_t) / scale
