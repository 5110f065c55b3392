"""Natural (non-robust) training: the loop behind the built-in models."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robustcli.data import Dataset


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy in eval mode; restores the model's mode afterwards."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += (model(x[i : i + batch_size].to(device)).argmax(1).cpu() == y[i : i + batch_size]).sum().item()
    model.train(was_training)
    return correct / max(len(y), 1)


def train_natural(
    model: nn.Module,
    data: Dataset,
    *,
    epochs: int,
    seed: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Adam on cross-entropy; the batch order depends only on `seed`."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(data), generator=gen)
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(data.x[idx].to(device)), data.y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if on_epoch is not None:
            on_epoch(epoch, total / len(data))
    opt.zero_grad(set_to_none=True)
    return model.eval()
