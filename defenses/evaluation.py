"""The robustness check every trainer reports: clean and Linf PGD accuracy on a test set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from robustcli.attacks.evaluate import evaluate
from robustcli.attacks.pgd import PGDLinf


@dataclass
class RobustnessReport:
    clean_accuracy: float
    pgd_accuracy: float
    eps: float
    steps: int
    restarts: int
    n: int


def clean_and_pgd_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    steps: int = 40,
    restarts: int = 1,
    batch_size: int = 256,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> RobustnessReport:
    """Clean accuracy and robust accuracy under the foundation's Linf PGD (CE loss, early stop).

    This is a first check, not a certificate: PGD-CE overestimates robustness of models that mask
    gradients (see `robust distill --evaluate`); run the strong suite for a verdict.
    """
    device = next(model.parameters()).device
    result = evaluate(
        model, x, y, [(PGDLinf(steps=steps, restarts=restarts), [eps])],
        device=device, batch_size=batch_size, seed=seed, on_batch=on_batch,
    )  # fmt: skip
    return RobustnessReport(result.clean_accuracy, result.outcomes[0].robust_accuracy, eps, steps, restarts, len(y))
