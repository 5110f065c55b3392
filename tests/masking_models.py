"""Models that mask gradients, shared by the strong-suite tests."""

from __future__ import annotations

import torch
from torch import nn


class ScaledLogits(nn.Module):
    """logits x scale: what defensive distillation at T = scale deployed at T = 1 produces."""

    def __init__(self, model: nn.Module, scale: float):
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.scale
