"""Square attack, Linf (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search", Algorithm 1 and section 3.1).

Score-based and gradient-free: the model is only ever called under `torch.no_grad()`, so it works
on models whose gradients are useless or unavailable (masked, non-differentiable, backward that
raises). Random search over perturbations on the vertices of the Linf ball:

- start: vertical stripes, delta[c, :, w] = +-eps drawn per point, channel and column;
- each step: a square window of side s at a random position gets a new value +-eps per channel
  (the same over the window); the candidate is kept if it lowers the margin loss
  L = Z_y - max_{i != y} Z_i (targeted: max_{i != t} Z_i - Z_t);
- the window's share of the image p follows the paper's schedule, p_init = 0.8 halved at
  iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of a 10,000-query budget, rescaled
  to the actual budget (as AutoAttack); s = round(sqrt(p * h * w)), between 1 and h - 1.

Defaults follow AutoAttack's "standard" version: 5,000 queries (the start counts as one), one
restart. Choices: window position and signs are drawn per point (the paper's code; AutoAttack
shares them across the batch); if the drawn window would leave a point's image unchanged, its
signs are flipped instead of redrawn (the paper redraws until the window changes). A point leaves
the batch once the criterion holds for it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustcli.attacks.base import Criterion, FixedEpsilonAttack
from robustcli.attacks.losses import margin
from robustcli.attacks.traits import AttackTraits

SCHEDULE = ((10, 2), (50, 4), (200, 8), (500, 16), (1000, 32), (2000, 64), (4000, 128), (6000, 256), (8000, 512))


def square_fraction(step: int, queries: int, p_init: float = 0.8) -> float:
    """p at this step: p_init divided per the schedule, on a 10,000-query scale."""
    it = int(step / max(queries, 1) * 10_000)
    p = p_init
    for threshold, divisor in SCHEDULE:
        if it > threshold:
            p = p_init / divisor
    return p


class SquareLinf(FixedEpsilonAttack):
    """Square attack in the Linf ball (score-based, margin loss, no gradients)."""

    name = "square"
    norm = "linf"
    traits = AttackTraits("margin", "linf", gradient_free=True, options=("queries", "restarts"))

    def __init__(self, queries: int = 5000, p_init: float = 0.8, restarts: int = 1):
        if queries < 1 or restarts < 1:
            raise ValueError("queries and restarts must be >= 1")
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        self.queries = queries
        self.p_init = p_init
        self.restarts = restarts

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        criterion: Criterion,
        eps: float | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if eps is None:
            raise ValueError("square needs an eps budget")
        if x.dim() != 4:
            raise ValueError(f"square needs image batches (N, C, H, W), got shape {tuple(x.shape)}")
        x_adv = x.clone()
        success = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        with torch.no_grad():
            for _ in range(self.restarts):
                idx = (~success).nonzero().squeeze(1)
                if len(idx) == 0 or eps == 0:
                    break
                found, xa = self._search(model, x[idx], idx, criterion, eps, generator)
                x_adv[idx[found]] = xa[found]
                success[idx[found]] = True
        return x_adv, success

    def _loss(self, logits: torch.Tensor, batch_idx: torch.Tensor, criterion: Criterion) -> torch.Tensor:
        lab = criterion.attack_labels[batch_idx]
        return -margin(logits, lab) if criterion.targeted else margin(logits, lab)

    def _search(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        idx: torch.Tensor,
        criterion: Criterion,
        eps: float,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = x0.shape
        dev = x0.device
        found = torch.zeros(n, dtype=torch.bool, device=dev)
        out = x0.clone()

        def signs(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.randint(0, 2, shape, generator=generator, device=dev).to(x0.dtype) * 2 - 1

        xb = (x0 + eps * signs((n, c, 1, w))).clamp(0, 1)
        logits = model(xb)
        loss = self._loss(logits, idx, criterion)
        hit = criterion(logits, idx)
        pos = torch.arange(n, device=dev)
        found[hit], out[hit] = True, xb[hit]
        keep = ~hit
        pos, xs, xb, loss = pos[keep], x0[keep], xb[keep], loss[keep]
        rows = torch.arange(h, device=dev)
        cols = torch.arange(w, device=dev)
        for step in range(1, self.queries):
            m = len(pos)
            if m == 0:
                break
            p = square_fraction(step - 1, self.queries, self.p_init)
            s = min(max(int(round(math.sqrt(p * h * w))), 1), h - 1, w - 1) if min(h, w) > 1 else 1
            vh = torch.randint(0, h - s + 1, (m,), generator=generator, device=dev)
            vw = torch.randint(0, w - s + 1, (m,), generator=generator, device=dev)
            in_h = (rows[None] >= vh[:, None]) & (rows[None] < vh[:, None] + s)
            in_w = (cols[None] >= vw[:, None]) & (cols[None] < vw[:, None] + s)
            window = (in_h[:, :, None] & in_w[:, None, :])[:, None]  # (m, 1, h, w)
            sg = signs((m, c, 1, 1))
            cand = torch.where(window, (xs + eps * sg).clamp(0, 1), xb)
            same = ((cand - xb).abs() * window).flatten(1).amax(1) < 1e-7
            if same.any():
                flipped = torch.where(window, (xs - eps * sg).clamp(0, 1), xb)
                cand = torch.where(same[:, None, None, None], flipped, cand)
            logits = model(cand)
            new_loss = self._loss(logits, idx[pos], criterion)
            hit = criterion(logits, idx[pos])
            better = (new_loss < loss) | hit
            xb = torch.where(better[:, None, None, None], cand, xb)
            loss = torch.where(better, new_loss, loss)
            if hit.any():
                found[pos[hit]] = True
                out[pos[hit]] = cand[hit]
                keep = ~hit
                pos, xs, xb, loss = pos[keep], xs[keep], xb[keep], loss[keep]
        return found, out
