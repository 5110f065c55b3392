"""Defensive distillation (Papernot et al. 2016, section IV).

1. Train a teacher F with softmax at temperature T: minimise CE(softmax(F(x) / T), y).
2. Soft labels: s(x) = softmax(F(x) / T) on the training set.
3. Train a student F_d (same architecture) at the same T on the soft labels:
   minimise -sum_i s_i(x) log softmax(F_d(x) / T)_i.
4. Deploy F_d at T = 1, i.e. use its raw logits. They are about T times larger than those of a
   network trained at T = 1, softmax saturates, and cross-entropy input gradients underflow to 0
   in float32: FGSM and PGD on CE stop working, while attacks on the logits (CW's margin) do not
   (Carlini & Wagner 2017).

Choices: Adam (lr 1e-3) rather than the paper's SGD (lr 0.1, momentum 0.5, 50 epochs), so the
short CPU runs converge; a given teacher's logits are divided by T to form the soft labels (the
paper's teacher is itself trained at T; a teacher trained at T = 1 gives near-uniform labels
at large T).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from robustcli.attacks.apgd import APGD
from robustcli.attacks.base import Attack, eval_mode, input_gradient
from robustcli.attacks.cw import CarliniWagnerL2
from robustcli.attacks.evaluate import Evaluation, evaluate
from robustcli.attacks.fgsm import FGSM
from robustcli.attacks.losses import cross_entropy
from robustcli.attacks.pgd import PGDLinf
from robustcli.core.checkpoint import Checkpointer
from robustcli.core.nn import model_float_dtype
from robustcli.core.training_loop import StepContext, descend, train_loop

Progress = Callable[[int, dict[str, float]], None]


def temperature_loss(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """CE of softmax(logits / T) against hard labels (N,) or soft labels (N, K), batch mean."""
    log_p = F.log_softmax(logits / temperature, 1)
    if target.dim() == 1:
        return F.nll_loss(log_p, target)
    return -(target * log_p).sum(1).mean()


def train_at_temperature(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    checkpointer: Checkpointer | None = None,
    resume: bool = False,
    on_batch: Progress | None = None,
    role: str = "model",
) -> list[dict[str, Any]]:
    """Train in place on hard labels (teacher) or soft labels (student) at temperature T."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    generators = {"order": torch.Generator().manual_seed(seed)}

    def step(xb: torch.Tensor, tb: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        loss = temperature_loss(model(xb), tb, temperature)
        descend(loss, opt, ctx)
        return {"loss": loss.detach()}

    config = {"role": role, "temperature": temperature, "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed}
    return train_loop(
        model, x, target, step, optimizers={"adam": opt}, generators=generators, epochs=epochs,
        batch_size=batch_size, run_config=config, checkpointer=checkpointer, resume=resume, on_batch=on_batch,
    ).history  # fmt: skip


@torch.no_grad()
def soft_labels(teacher: nn.Module, x: torch.Tensor, temperature: float, batch_size: int = 500) -> torch.Tensor:
    """softmax(teacher(x) / T) in eval mode, on the teacher's device, in x's dtype.

    The teacher runs in its own precision (a float64 teacher on exact float64 copies of x); its soft
    labels are targets for a student trained on x, so they come back in x's dtype."""
    device, dtype = next(teacher.parameters()).device, model_float_dtype(teacher)
    with eval_mode(teacher):
        out = torch.cat([F.softmax(teacher(x[i : i + batch_size].to(device, dtype)) / temperature, 1)
                         for i in range(0, len(x), batch_size)])
    return out.to(x.dtype)


@torch.no_grad()
def logit_scale(model: nn.Module, x: torch.Tensor) -> float:
    """Median over points of the spread max - min of the logits: how saturated softmax is at T = 1."""
    with eval_mode(model):
        z = model(x.to(next(model.parameters()).device))
    return (z.amax(1) - z.amin(1)).median().item()


def ce_gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-point L2 norm of d CE(model(x), y) / dx in eval mode (N,), on the model's device."""
    device = next(model.parameters()).device
    with eval_mode(model), torch.enable_grad():
        _, grad = input_gradient(model, x.to(device), lambda z: cross_entropy(z, y.to(device)))
    return grad.flatten(1).norm(dim=1)


class PGDMarginLinf(PGDLinf):
    """Linf PGD on the logit margin Z_y - max_{i != y} Z_i (the CW loss) instead of CE: the same
    budget as PGD-CE, so the two rows differ only in the loss and show the masking directly."""

    name = "pgd-margin"

    def __init__(self, steps: int = 40, restarts: int = 1):
        super().__init__(steps=steps, restarts=restarts, loss="margin")


def distillation_attacks(
    eps: float, steps: int = 40, cw_steps: int = 100, cw_search_steps: int = 5
) -> list[tuple[Attack, list[float]]]:
    """The seed report's comparison: FGSM and PGD on CE, PGD on the margin and APGD on the
    (scale-invariant) DLR loss at the same Linf eps, and CW-L2 without a budget (success = any
    adversarial found; its median L2 tells how far). APGD-DLR is there for the gradient-masking
    diagnostics, whose margin-vs-CE check compares it with PGD-CE at the same budget."""
    return [
        (FGSM(), [eps]),
        (PGDLinf(steps=steps), [eps]),
        (PGDMarginLinf(steps=steps), [eps]),
        (APGD(norm="linf", loss="dlr", steps=steps), [eps]),
        (CarliniWagnerL2(steps=cw_steps, binary_search_steps=cw_search_steps), [math.inf]),
    ]


def attack_distilled(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int = 40,
    cw_steps: int = 100,
    cw_search_steps: int = 5,
    batch_size: int = 256,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> Evaluation:
    """Run `distillation_attacks` on a model; worst case per point as in `attacks.evaluate`."""
    device = next(model.parameters()).device
    return evaluate(
        model, x, y, distillation_attacks(eps, steps, cw_steps, cw_search_steps), device=device, batch_size=batch_size, seed=seed,
        on_batch=on_batch,
    )  # fmt: skip
