"""Plain cross-entropy training for the benchmarks that bound a network trained in the same run (a
naturally trained network's unstable neurons, not random weights); not a benchmark itself."""

from __future__ import annotations

import torch
from torch import nn


def train_clean(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> float:
    """Adam (lr 2e-3), batches of 64 in a seeded order; returns the last batch's loss, the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), 64):
            idx = order[s : s + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return float(loss)
