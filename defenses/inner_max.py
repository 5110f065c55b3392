"""The inner maximisation of adversarial training: Linf PGD on any per-point loss.

Uses the attacks' Linf ball geometry (`attacks.geometry.LINF`: uniform random start, signed
steps, clipping to the ball), the one PGD and APGD use, but not PGD's attack loop, on purpose: the attack loop stops on a point
as soon as it is misclassified, which is right for measuring robustness but would train on
weaker examples than Madry et al.'s min-max (eq. 2.1), and it only ascends label losses, while
TRADES and AdvMoE ascend a KL divergence. Here every point takes every step.

Choice (documented for all trainers): the inner maximisation runs with the model in eval mode,
as the foundation's attacks do, so batch-norm layers use running statistics and do not update
them while the attack probes the model; the outer training step runs in train mode.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch

from robustcli.attacks.geometry import LINF
from robustcli.core.nn import eval_mode


def pgd_maximize(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    eps: float,
    *,
    steps: int,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    model: torch.nn.Module | None = None,
    keep_best: bool = False,
) -> torch.Tensor:
    """Approximately argmax_{||d||_inf <= eps, x + d in [0, 1]} sum(loss_fn(x + d)); returns x + d detached.

    `loss_fn` maps a batch to per-point losses (N,). The step size defaults to 2.5 * eps / steps
    (Madry et al.). If `model` is given it is held in eval mode during the search (see module doc).
    With `keep_best`, each point gets the iterate (the clean input included) with the highest loss
    seen, at the cost of one more forward pass; otherwise the last iterate, as in training.
    Parameters' `.grad` are never touched: gradients are taken w.r.t. the input only.
    """
    x = x.detach()
    if eps <= 0 or steps < 1:
        return x.clone()
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    xa = (x + LINF.uniform_in_ball(x, eps, generator)).clamp(0, 1)
    ctx = eval_mode(model) if model is not None else nullcontext()
    with ctx:
        if keep_best:
            with torch.no_grad():
                best, best_loss = x.clone(), loss_fn(x)
        with torch.enable_grad():
            for _ in range(steps):
                xa.requires_grad_(True)
                loss = loss_fn(xa)
                grad = torch.autograd.grad(loss.sum(), xa)[0]
                if keep_best:
                    best, best_loss = _better(best, best_loss, xa.detach(), loss.detach())
                delta = LINF.project(xa.detach() + alpha * LINF.ascent_direction(grad) - x, eps)
                xa = (x + delta).clamp(0, 1)
        if keep_best:
            with torch.no_grad():
                best, _ = _better(best, best_loss, xa, loss_fn(xa))
            return best
    return xa.detach()


def _better(
    best: torch.Tensor, best_loss: torch.Tensor, xa: torch.Tensor, loss: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    take = loss > best_loss
    mask = take.view(-1, *([1] * (xa.dim() - 1)))
    return torch.where(mask, xa, best), torch.where(take, loss, best_loss)
