"""Square attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search", Algorithm 1), Linf (section 3.1) and L2 (section 3.2).

Score-based and gradient-free: the model is only ever called under `torch.no_grad()`, so it works
on models whose gradients are useless or unavailable (masked, non-differentiable, backward that
raises). A random search that keeps a candidate if it lowers the margin loss
L = Z_y - max_{i != y} Z_i (targeted: max_{i != t} Z_i - Z_t), changing one square window at a
time; the window's share of the image p follows the paper's schedule, p_init = 0.8 halved at
iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of a 10,000-query budget, rescaled to
the actual budget (as AutoAttack).

Linf: perturbations on the vertices of the ball.
- start: vertical stripes, delta[c, :, w] = +-eps drawn per point, channel and column;
- each step: a window of side s = round(sqrt(p * h * w)) (between 1 and h - 1) at a random
  position gets a new value +-eps per channel (the same over the window).

L2: perturbations on the sphere of radius eps, built from a "meta pattern" eta(s) (section 3.2):
two halves of opposite sign, each a stack of concentric squares weighted 1 / (k + 1)^2, of unit
L2 norm, transposed at random.
- start: a grid of tiles of side h // 5, each eta(s) times a random sign per channel, scaled to
  norm eps;
- each step: two windows W1, W2 of odd side s = round(sqrt(p * h * w)) (at least 3, at most the
  image) at random positions; per channel, W1 gets its old direction plus a fresh +-eta(s),
  rescaled to carry the energy of W1 and W2 together (plus any slack up to eps left by
  clipping), and W2 is zeroed; the perturbation is rescaled to norm eps and the image clipped
  to [0, 1].

Defaults follow AutoAttack's "standard" version: 5,000 queries (the start counts as one), one
restart. Choices: window positions, signs and pattern orientations are drawn per point (the
paper's code; AutoAttack shares them across the batch); in Linf, if the drawn window would leave
a point's image unchanged, its signs are flipped instead of redrawn (the paper redraws until the
window changes). A point leaves the batch once the criterion holds for it.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch

from robustcli.attacks.base import AttackProblem, Criterion, FixedEpsilonAttack, search_unbroken
from robustcli.attacks.losses import margin
from robustcli.attacks.norms import flat_norm, per_point
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


class SquareAttack(FixedEpsilonAttack):
    """The random search shared by both norms; a subclass draws the start and each candidate."""

    name: str
    norm: str

    def __init__(self, queries: int = 5000, p_init: float = 0.8, restarts: int = 1):
        if queries < 1 or restarts < 1:
            raise ValueError("queries and restarts must be >= 1")
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        self.queries = queries
        self.p_init = p_init
        self.restarts = restarts

    @property
    def traits(self) -> AttackTraits:
        return AttackTraits("margin", self.norm, gradient_free=True, options=("queries", "restarts"))

    def run_within(self, problem: AttackProblem, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        x = problem.x
        if x.dim() != 4:
            raise ValueError(f"{self.name} needs image batches (N, C, H, W), got shape {tuple(x.shape)}")
        x_adv = x.clone()
        success = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        if eps > 0:
            with torch.no_grad():
                search_unbroken(x_adv, success, self.restarts, lambda idx: self._search(problem, idx, eps))
        return x_adv, success

    def _loss(self, logits: torch.Tensor, batch_idx: torch.Tensor, criterion: Criterion) -> torch.Tensor:
        lab = criterion.attack_labels[batch_idx]
        return -margin(logits, lab) if criterion.targeted else margin(logits, lab)

    def _search(self, problem: AttackProblem, idx: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One random search on the points `idx` of the batch; returns (found, adversarial points)."""
        model, criterion, generator = problem.model, problem.criterion, problem.generator
        x0 = problem.x[idx]
        n = len(x0)
        dev = x0.device
        found = torch.zeros(n, dtype=torch.bool, device=dev)
        out = x0.clone()

        xb = self._start(x0, eps, generator)
        logits = model(xb)
        loss = self._loss(logits, idx, criterion)
        hit = criterion(logits, idx)
        pos = torch.arange(n, device=dev)
        found[hit], out[hit] = True, xb[hit]
        keep = ~hit
        pos, xs, xb, loss = pos[keep], x0[keep], xb[keep], loss[keep]
        for step in range(1, self.queries):
            m = len(pos)
            if m == 0:
                break
            p = square_fraction(step - 1, self.queries, self.p_init)
            cand = self._propose(xs, xb, eps, p, generator)
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

    @abstractmethod
    def _start(self, x0: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
        """The first point of the search, in the ball and the box."""

    @abstractmethod
    def _propose(
        self, xs: torch.Tensor, xb: torch.Tensor, eps: float, p: float, generator: torch.Generator | None
    ) -> torch.Tensor:
        """A candidate that changes the current best xb around the clean xs in windows of share p."""


def _signs(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=like.device).to(like.dtype) * 2 - 1


def _windows(n: int, h: int, w: int, s: int, device, generator: torch.Generator | None):
    """A random s x s window per point: (mask (n, 1, h, w), top rows (n,), left columns (n,))."""
    vh = torch.randint(0, h - s + 1, (n,), generator=generator, device=device)
    vw = torch.randint(0, w - s + 1, (n,), generator=generator, device=device)
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    in_h = (rows[None] >= vh[:, None]) & (rows[None] < vh[:, None] + s)
    in_w = (cols[None] >= vw[:, None]) & (cols[None] < vw[:, None] + s)
    return (in_h[:, :, None] & in_w[:, None, :])[:, None], vh, vw


class SquareLinf(SquareAttack):
    """Square attack in the Linf ball (score-based, margin loss, no gradients)."""

    name = "square"
    norm = "linf"

    def _start(self, x0, eps, generator):
        n, c, _, w = x0.shape
        return (x0 + eps * _signs((n, c, 1, w), x0, generator)).clamp(0, 1)

    def _propose(self, xs, xb, eps, p, generator):
        m, c, h, w = xs.shape
        s = min(max(int(round(math.sqrt(p * h * w))), 1), h - 1, w - 1) if min(h, w) > 1 else 1
        window, _, _ = _windows(m, h, w, s, xs.device, generator)
        sg = _signs((m, c, 1, 1), xs, generator)
        cand = torch.where(window, (xs + eps * sg).clamp(0, 1), xb)
        same = ((cand - xb).abs() * window).flatten(1).amax(1) < 1e-7
        if same.any():
            flipped = torch.where(window, (xs - eps * sg).clamp(0, 1), xb)
            cand = torch.where(same[:, None, None, None], flipped, cand)
        return cand


def _rings(a: int, b: int) -> torch.Tensor:
    """An a x b block of concentric squares around (a // 2, b // 2), ring k weighted 1 / (k + 1)^2
    and summed inwards (a pixel at Chebyshev distance r gets sum_{k >= r} 1 / (k + 1)^2)."""
    rows = (torch.arange(a)[:, None] - a // 2).abs()
    cols = (torch.arange(b)[None, :] - b // 2).abs()
    dist = torch.maximum(rows, cols)
    rings = max(a // 2 + 1, b // 2 + 1)
    weights = 1.0 / torch.arange(1, rings + 1, dtype=torch.float32) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[r] = sum_{k >= r} weights[k]
    return tail[dist]


def meta_pattern(s: int) -> torch.Tensor:
    """eta(s) of the L2 Square attack (section 3.2): unit L2 norm, two halves of opposite sign."""
    top, bottom = s // 2, s - s // 2
    parts = ([_rings(top, s)] if top else []) + [-_rings(bottom, s)]
    eta = torch.cat(parts, 0)
    return eta / eta.pow(2).sum().sqrt()


class SquareL2(SquareAttack):
    """Square attack on the L2 sphere of radius eps (score-based, margin loss, no gradients)."""

    name = "square-l2"
    norm = "l2"

    def _start(self, x0, eps, generator):
        n, c, h, w = x0.shape
        s = max(min(h, w) // 5, 1)
        top, left = (h - 5 * s) // 2 if h >= 5 * s else 0, (w - 5 * s) // 2 if w >= 5 * s else 0
        eta = meta_pattern(s).to(device=x0.device, dtype=x0.dtype)
        delta = torch.zeros_like(x0)
        for i in range(top, h - s + 1, s):
            for j in range(left, w - s + 1, s):
                delta[:, :, i : i + s, j : j + s] = eta * _signs((n, c, 1, 1), x0, generator)
        return (x0 + eps * self._unit(delta)).clamp(0, 1)

    def _propose(self, xs, xb, eps, p, generator):
        m, c, h, w = xs.shape
        s = max(int(round(math.sqrt(p * h * w))), 3)
        s = min(s + 1 - s % 2, h, w)  # odd, so the pattern has a centre
        win1, vh, vw = _windows(m, h, w, s, xs.device, generator)
        win2, _, _ = _windows(m, h, w, s, xs.device, generator)
        eta = meta_pattern(s).to(device=xs.device, dtype=xs.dtype)
        patterns = torch.stack([eta, eta.t()])  # the pattern or its transpose, per point
        flip = torch.randint(0, 2, (m,), generator=generator, device=xs.device)
        r = (torch.arange(h, device=xs.device)[None] - vh[:, None]).clamp(0, s - 1)  # (m, h)
        q = (torch.arange(w, device=xs.device)[None] - vw[:, None]).clamp(0, s - 1)  # (m, w)
        fresh = patterns[flip[:, None, None], r[:, :, None], q[:, None, :]][:, None] * win1  # (m, 1, h, w)
        fresh = fresh * _signs((m, c, 1, 1), xs, generator)
        delta = xb - xs

        def energy(t: torch.Tensor) -> torch.Tensor:  # per point and channel: squared L2 norm
            return t.pow(2).sum((2, 3), keepdim=True)

        old = delta * win1
        new = fresh + old / (energy(old).sqrt() + 1e-12)
        slack = (eps**2 - flat_norm(delta, "l2") ** 2).clamp_min(0) / c
        target = (per_point(slack, delta) + energy(delta * (win1 | win2))).sqrt()
        new = new / (energy(new).sqrt() + 1e-12) * target
        delta = torch.where(win2, torch.zeros_like(delta), delta)
        delta = torch.where(win1, new, delta)
        return (xs + eps * self._unit(delta)).clamp(0, 1)

    @staticmethod
    def _unit(t: torch.Tensor) -> torch.Tensor:
        return t / per_point(flat_norm(t, "l2").clamp_min(1e-12), t)
