"""Projected gradient ascent on a loss, the shared engine of FGSM and PGD.

A subclass names its ball (`attacks.geometry`): the random start uniform in the ball, the
steepest-ascent direction of a gradient and the projection back onto the ball come from there.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from robustcli.attacks.base import AttackProblem, FixedEpsilonAttack, input_gradient
from robustcli.attacks.geometry import LpBall
from robustcli.attacks.losses import attack_loss
from robustcli.attacks.traits import AttackTraits


class GradientAttack(FixedEpsilonAttack):
    """Projected gradient ascent (Madry et al. 2018, eq. 2) with restarts and per-point early stop.

    Each step costs one forward and one backward pass. A point leaves the active batch as soon as
    the criterion holds for it, so already-broken points cost nothing more; the adversarial point
    is recorded at that moment; a point never broken returns its last iterate. With several restarts, a point counts as robust only if every
    restart failed (worst case per point).
    """

    ball: ClassVar[LpBall]
    single_step: ClassVar[bool] = False
    options: ClassVar[tuple[str, ...]] = ("steps", "restarts")

    def __init__(
        self,
        steps: int = 40,
        rel_stepsize: float | None = None,
        abs_stepsize: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
    ):
        if steps < 1 or restarts < 1:
            raise ValueError("steps and restarts must be >= 1")
        self.steps = steps
        # 2.5 * eps / steps (Madry et al.): lets a walk from the ball's edge reach the other side.
        self.rel_stepsize = rel_stepsize if rel_stepsize is not None else 2.5 / steps
        self.abs_stepsize = abs_stepsize
        self.random_start = random_start
        self.restarts = restarts
        self.loss = loss

    @property
    def traits(self) -> AttackTraits:
        # the PGD losses "ce" and "margin" are loss families of their own
        return AttackTraits(self.loss, self.norm, single_step=self.single_step, options=self.options)

    def run_within(self, problem: AttackProblem, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        model, x, criterion, generator = problem.model, problem.x, problem.criterion, problem.generator
        stepsize = self.abs_stepsize if self.abs_stepsize is not None else self.rel_stepsize * eps
        labels = criterion.attack_labels
        x_adv = x.clone()
        success = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            idx = (~success).nonzero().squeeze(1)
            if len(idx) == 0:
                break
            x0 = x[idx]
            delta = self.ball.uniform_in_ball(x0, eps, generator) if self.random_start and eps > 0 else torch.zeros_like(x0)
            xa = (x0 + delta).clamp(0, 1)
            for step in range(self.steps + 1):
                lab = labels[idx]
                if step < self.steps:
                    logits, grad = input_gradient(
                        model, xa, lambda z: attack_loss(self.loss, z, lab, criterion.targeted)
                    )
                else:
                    with torch.no_grad():
                        logits = model(xa)
                hit = criterion(logits, idx)
                if hit.any():
                    x_adv[idx[hit]] = xa[hit]
                    success[idx[hit]] = True
                    keep = ~hit
                    idx, x0, xa = idx[keep], x0[keep], xa[keep]
                    if step < self.steps:
                        grad = grad[keep]
                if step == self.steps or len(idx) == 0:
                    x_adv[idx] = xa  # unbroken points keep their last iterate (success stays False)
                    break
                delta = self.ball.project(xa + stepsize * self.ball.ascent_direction(grad) - x0, eps)
                xa = (x0 + delta).clamp(0, 1)
        return x_adv, success
