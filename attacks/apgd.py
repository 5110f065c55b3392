"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", Algorithm 1), in Linf and L2, with the CE and DLR losses.

APGD is PGD without a step-size parameter: it starts with eta = 2 eps, adds momentum, and at
checkpoints w_j halves the step of every point whose search has stalled, restarting it from the
best point found so far. The checkpoints are p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j -
p_{j-1} - 0.03, 0.06) (as fractions of the iterations). At w_j the step of a point is halved if

1. the loss increased in fewer than rho * (w_j - w_{j-1}) of the steps since w_{j-1}, or
2. its step was not halved at w_{j-1} and its best loss did not improve since then,

with rho = 0.75. One step is z = P(x_k + eta * d(grad)), x_{k+1} = P(x_k + alpha (z - x_k) + (1 -
alpha)(x_k - x_{k-1})) with alpha = 0.75 (the first step has no momentum), d the sign (Linf) or
the L2-normalised gradient, P the projection onto the eps ball and the [0, 1] box.

Names as AutoAttack uses them: `apgd-ce` (CE), `apgd-dlr` (untargeted DLR, eq. 3), `apgd-t`
(targeted DLR, eq. 4); `-l2` for the L2 versions. Defaults follow AutoAttack's "standard"
version: 100 iterations, 1 restart; APGD-T attacks in turn the classes with the 2nd .. 10th
highest clean logit (9 targets, fewer when the model has fewer classes), each only on the points
the previous targets left unbroken.

After a step-size halving the iterate jumps back to its best point x_best (with its gradient)
while x_{k-1} is kept, so the first step after it carries the momentum x_best - x_{k-1}, as in
AutoAttack's code.

Choices: the random start lies on the sphere of radius eps (as AutoAttack); a point leaves the
batch as soon as the criterion holds for it (it no longer influences anything, so the other
points' search is unchanged). With a user-given target (a targeted criterion) APGD-T attacks
that target only.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from robustcli.attacks.base import AttackProblem, Criterion, FixedEpsilonAttack, search_unbroken, top_other_classes
from robustcli.attacks.geometry import LpBall
from robustcli.attacks.losses import cross_entropy, dlr, dlr_targeted
from robustcli.attacks.norms import per_point
from robustcli.attacks.traits import AttackTraits

LOSSES = ("ce", "dlr", "dlr-targeted")

# per-point loss to ascend, given (logits, positions of the active points in the batch)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def checkpoint_lengths(steps: int) -> list[int]:
    """Iterations between checkpoints: 0.22 N, then 0.03 N shorter each time, at least 0.06 N."""
    first = max(int(0.22 * steps), 1)
    decrease = max(int(0.03 * steps), 1)
    minimum = max(int(0.06 * steps), 1)
    lengths, k, total = [], first, 0
    while total < steps:
        lengths.append(k)
        total += k
        k = max(k - decrease, minimum)
    return lengths


class APGD(FixedEpsilonAttack):
    """APGD (Croce & Hein 2020, Algorithm 1); `loss` is "ce", "dlr" (untargeted) or "dlr-targeted" (APGD-T)."""

    def __init__(
        self,
        norm: str = "linf",
        loss: str = "ce",
        steps: int = 100,
        restarts: int = 1,
        target_classes: int = 9,
        rho: float = 0.75,
        momentum: float = 0.75,
    ):
        self.ball = LpBall(norm)  # refuses an unknown norm
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
        if steps < 1 or restarts < 1 or target_classes < 1:
            raise ValueError("steps, restarts and target_classes must be >= 1")
        self.norm = norm
        self.loss = loss
        self.steps = steps
        self.restarts = restarts
        self.target_classes = target_classes
        self.rho = rho
        self.momentum = momentum
        base = {"ce": "apgd-ce", "dlr": "apgd-dlr", "dlr-targeted": "apgd-t"}[loss]
        self.name = base if norm == "linf" else f"{base}-l2"

    @property
    def traits(self) -> AttackTraits:
        family = "ce" if self.loss == "ce" else "dlr"
        return AttackTraits(family, self.norm, targeted=self.loss == "dlr-targeted", options=("steps", "restarts"))

    def _project(self, x_new: torch.Tensor, x0: torch.Tensor, eps: float) -> torch.Tensor:
        """P: onto the eps ball around x0 (`attacks.geometry`), then onto the [0, 1] box."""
        return (x0 + self.ball.project(x_new - x0, eps)).clamp(0, 1)

    # -- the attack ---------------------------------------------------------------------------

    def run_within(self, problem: AttackProblem, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        model, x, criterion = problem.model, problem.x, problem.criterion
        x_adv = x.clone()
        success = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for loss_fn in self._losses(model, x, criterion):

            def search(idx: torch.Tensor, loss_fn: LossFn = loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
                return self._search(problem, idx, loss_fn, eps)

            search_unbroken(x_adv, success, self.restarts, search)
        return x_adv, success

    def _losses(self, model: nn.Module, x: torch.Tensor, criterion: Criterion) -> list[LossFn]:
        """One loss per pass: CE or DLR once, or targeted DLR once per target class."""
        y = criterion.labels
        sign = -1.0 if criterion.targeted else 1.0
        if self.loss == "ce":
            lab = criterion.attack_labels
            return [lambda z, i: sign * cross_entropy(z, lab[i])]
        if self.loss == "dlr":
            lab = criterion.attack_labels
            return [lambda z, i: sign * dlr(z, lab[i])]
        if criterion.targeted:
            t = criterion.targets
            return [lambda z, i: dlr_targeted(z, y[i], t[i])]
        targets = top_other_classes(model, x, self.target_classes)
        return [(lambda z, i, t=t: dlr_targeted(z, y[i], t[i])) for t in targets]

    def _search(
        self, problem: AttackProblem, idx: torch.Tensor, loss_fn: LossFn, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One APGD run from a random start on the points `idx` of the batch; returns (found (n,),
        adversarial points (n, ...))."""
        model, criterion = problem.model, problem.criterion
        x0 = problem.x[idx]
        n = len(x0)
        dev = x0.device
        found = torch.zeros(n, dtype=torch.bool, device=dev)
        out = x0.clone()
        pos = torch.arange(n, device=dev)  # active points, as positions in this run's batch

        def evaluate(xa: torch.Tensor, p: torch.Tensor):
            xa = xa.detach().requires_grad_(True)
            logits = model(xa)
            loss = loss_fn(logits, idx[p])
            grad = torch.autograd.grad(loss.sum(), xa)[0]
            return loss.detach(), grad.detach(), criterion(logits.detach(), idx[p])

        xk = (x0 + self.ball.on_sphere(x0, eps, problem.generator)).clamp(0, 1) if eps > 0 else x0.clone()
        loss, grad, hit = evaluate(xk, pos)
        state = {
            "x0": x0, "xk": xk, "xprev": xk, "grad": grad, "loss": loss,
            "xbest": xk, "gbest": grad, "lbest": loss.clone(),
            "eta": torch.full((n,), 2.0 * eps, device=dev, dtype=x0.dtype),
            "ups": torch.zeros(n, device=dev), "halved": torch.zeros(n, dtype=torch.bool, device=dev),
            "lbest_ckpt": loss.clone(), "pos": pos,
        }  # fmt: skip

        def drop_hits(hit: torch.Tensor) -> None:
            if hit.any():
                p = state["pos"][hit]
                found[p] = True
                out[p] = state["xk"][hit]
                for k, v in state.items():
                    state[k] = v[~hit]

        drop_hits(hit)
        lengths = iter(checkpoint_lengths(self.steps))
        window, since = next(lengths), 0
        for step in range(self.steps):
            if len(state["pos"]) == 0:
                break
            s = state
            a = 1.0 if step == 0 else self.momentum
            z = self._project(s["xk"] + per_point(s["eta"], s["xk"]) * self.ball.ascent_direction(s["grad"]), s["x0"], eps)
            x_new = self._project(s["xk"] + a * (z - s["xk"]) + (1 - a) * (s["xk"] - s["xprev"]), s["x0"], eps)
            loss, grad, hit = evaluate(x_new, s["pos"])
            s["ups"] += (loss > s["loss"]).float()
            better = loss > s["lbest"]
            s["xbest"] = torch.where(per_point(better, x_new), x_new, s["xbest"])
            s["gbest"] = torch.where(per_point(better, grad), grad, s["gbest"])
            s["lbest"] = torch.where(better, loss, s["lbest"])
            s["xprev"], s["xk"], s["grad"], s["loss"] = s["xk"], x_new, grad, loss
            drop_hits(hit)
            since += 1
            if since == window and len(state["pos"]) > 0:
                self._checkpoint(state, window)
                window, since = next(lengths, window), 0
        return found, out

    def _checkpoint(self, s: dict[str, torch.Tensor], window: int) -> None:
        """At checkpoint w_j: halve the step of each stalled point (conditions 1 and 2 of the module
        docstring) and send it back to its best point, keeping x_{k-1} so that the next step's
        momentum is x_best - x_{k-1} (AutoAttack's code). Updates the search state in place."""
        stalled = s["ups"] < self.rho * window
        no_progress = ~s["halved"] & (s["lbest"] <= s["lbest_ckpt"])
        halve = stalled | no_progress
        s["eta"] = torch.where(halve, s["eta"] / 2, s["eta"])
        back = per_point(halve, s["xk"])
        s["xk"] = torch.where(back, s["xbest"], s["xk"])  # s["xprev"] stays x_{k-1}
        s["grad"] = torch.where(back, s["gbest"], s["grad"])
        s["loss"] = torch.where(halve, s["lbest"], s["loss"])
        s["halved"], s["lbest_ckpt"], s["ups"] = halve, s["lbest"].clone(), torch.zeros_like(s["ups"])
