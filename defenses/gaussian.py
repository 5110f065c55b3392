"""Gaussian data augmentation (Cohen, Rosenfeld & Kolter 2019, sec. 3.2 and 4): the training that
makes a base classifier f good under noise, so that its smoothed classifier
g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I), is accurate and certifiable in L2.

Per batch: CE(f(x + e), y) with one fresh draw e ~ N(0, sigma^2 I) per point. As in the paper,
sigma is the noise the smoothed classifier will be certified with.

Choices: the noise is added in the model's input space, [0, 1] pixels, before the model's own
normalisation (`Normalized` divides by std, so the network sees sigma / std), and the noisy
image is not clipped to [0, 1]: randomized smoothing certifies g with unclipped Gaussian noise,
and training on the same distribution is what the paper does. The noise comes from a seeded
`torch.Generator` on the model's device, saved in the training checkpoint with the other
generators, so runs are reproducible and resume bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    """e ~ N(0, sigma^2 I) of x's shape, dtype and device."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * sigma


def gaussian_augmentation_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, sigma: float, generator: torch.Generator | None
) -> dict[str, torch.Tensor]:
    """CE(f(x + e), y), e ~ N(0, sigma^2 I) in pixel space; "loss" is what to minimise."""
    logits = model(x + gaussian_noise(x, sigma, generator))
    return {"loss": F.cross_entropy(logits, y), "noisy_acc": (logits.argmax(1) == y).float().mean()}
