"""Natural (non-robust) training: the loop behind the built-in models."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robustcli.data import Dataset
from robustcli.core.ddp import DataParallel
from robustcli.core.nn import eval_mode


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy in eval mode; restores the model's mode afterwards."""
    device = next(model.parameters()).device
    correct = 0
    with eval_mode(model):
        for i in range(0, len(y), batch_size):
            correct += (model(x[i : i + batch_size].to(device)).argmax(1).cpu() == y[i : i + batch_size]).sum().item()
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
    """Adam on cross-entropy; the batch order depends only on `seed`.

    Under torchrun each rank trains on its slice of every global batch of `batch_size` points
    (`robustcli.ddp`), giving the single-process weights up to float rounding.
    """
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    parallel = DataParallel(model)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(data), generator=gen)
        total = 0.0
        for i in range(0, len(order), batch_size):
            part = parallel.local(order[i : i + batch_size])
            loss = parallel(_cross_entropy, data.x[part.index].to(device), data.y[part.index].to(device))
            opt.zero_grad(set_to_none=True)
            (loss * part.weight).backward()
            opt.step()
            total += loss.item() * part.points
        if on_epoch is not None:
            on_epoch(epoch, parallel.reduce_sums({"loss": total})["loss"] / len(data))
    opt.zero_grad(set_to_none=True)
    return parallel.finish().eval()


def _cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)
