"""Modules the bound engines understand beyond torch.nn's: a residual block."""

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
