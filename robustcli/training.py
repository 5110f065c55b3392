"""Natural (non-robust) training of the built-in models, and top-1 accuracy."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from robustcli.data import Dataset
from robustcli.core.nn import eval_mode
from robustcli.defenses.adversarial import AdversarialConfig, train_adversarial


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
    on_batch: Callable[[int, dict[str, float]], None] | None = None,
) -> nn.Module:
    """Adam on cross-entropy in the shared training loop; the batch order depends only on `seed`.

    The `natural` step of `defenses.adversarial` in `core.training_loop`: under torchrun each
    rank trains on its slice of every global batch, giving the single-process weights up to
    float rounding.
    """
    config = AdversarialConfig(defense="natural", eps=0.0, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    report = None if on_epoch is None else (lambda record: on_epoch(record["epoch"], record["loss"]))
    train_adversarial(model, data.x, data.y, config, on_epoch=report, on_batch=on_batch)
    return model.eval()
