"""Small modules that engines and loaders share: input normalisation and a residual block.

Plain modules (no functional tricks inside `forward`) so bound engines can walk them."""

from __future__ import annotations

import torch
from torch import nn


class Residual(nn.Module):
    """body(x) + shortcut(x); the shortcut defaults to the identity.

    A plain module (not a functional add inside a custom forward) so bound engines can walk it.
    """

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class Normalized(nn.Module):
    """Applies (x - mean) / std before the wrapped model, so attacks work in [0, 1] pixel space."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        shape = (1, len(mean), 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)
