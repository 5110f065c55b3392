"""The geometry of an Lp ball (Linf and L2) that every gradient attack walks in.

Three operations define projected gradient ascent in a norm ball (Madry et al. 2018, eq. 2):

- the steepest-ascent direction of unit norm for a gradient g: sign(g) for Linf (the dual norm
  is L1), g / ||g||_2 for L2;
- the Euclidean projection of a perturbation onto the eps ball: clipping each coordinate to
  [-eps, eps] for Linf, rescaling to radius eps when outside for L2;
- random starts: uniform inside the ball (PGD: Madry et al. for Linf, foolbox's L2 rule: a
  uniform direction times a radius eps * U^(1/d)) or on its sphere (APGD, Croce & Hein 2020:
  a uniform cube point scaled to Linf norm eps, or a Gaussian direction scaled to L2 norm eps).

A fourth serves FAB (Croce & Hein 2020, section 3.1): the smallest step onto a hyperplane that
stays in the [0, 1] box (`step_to_hyperplane`).

PGD, APGD, FAB and the inner maximisation of adversarial training all take
these from here, so a fix to a projection or a step reaches every one of them. The [0, 1] box
is not part of the ball: callers clip x + delta to it after projecting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustcli.attacks.norms import NORMS, flat_norm, per_point

_TINY = 1e-12  # guards divisions by a zero norm (a zero gradient or a zero perturbation)


@dataclass(frozen=True)
class LpBall:
    """The eps ball of one norm ("linf" or "l2") around each point of a batch."""

    norm: str

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; expected one of {NORMS}")

    def ascent_direction(self, grad: torch.Tensor) -> torch.Tensor:
        """The unit-norm direction that increases a linear function with gradient `grad` most."""
        if self.norm == "linf":
            return grad.sign()
        return grad / per_point(flat_norm(grad, "l2").clamp_min(_TINY), grad)

    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        """The closest point to `delta` (per point, Euclidean) inside the eps ball."""
        if self.norm == "linf":
            return delta.clamp(-eps, eps)
        n = flat_norm(delta, "l2")
        factor = torch.where(n > eps, eps / n.clamp_min(_TINY), torch.ones_like(n))
        return delta * per_point(factor, delta)

    def uniform_in_ball(self, x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
        """A perturbation drawn uniformly from the eps ball, one per point of x."""
        if self.norm == "linf":
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return (2 * u - 1) * eps
        d = x[0].numel()
        direction = self._unit(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))
        radius = torch.rand(len(x), generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
        return direction * per_point(radius * eps, x)

    def on_sphere(self, x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
        """A random perturbation of norm exactly eps (AutoAttack's random start), one per point."""
        if self.norm == "linf":
            t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
        else:
            t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return eps * self._unit(t)

    def step_to_hyperplane(self, p: torch.Tensor, w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The smallest d (in this norm) with w . d = c and p + d in [0, 1], per row of flat (n, d) inputs.

        Closed form (FAB's projection, Croce & Hein 2020, section 3.1): after flipping w so that
        c >= 0, each coordinate moves towards sign(w_i) by d_i = min(tau s_i, room_i), with room_i
        the distance to the box side it moves to and s_i = 1 (Linf: every coordinate moves by the
        same tau until it hits the box) or |w_i| (L2: d proportional to w until clipped). The reach
        h(tau) = sum_i |w_i| d_i(tau) is piecewise linear and increasing, with kinks at
        tau_i = room_i / s_i; sorting the kinks gives the tau with h(tau) = c exactly. When even the
        whole box cannot reach the hyperplane, every coordinate moves to its box side (the point
        of the box closest to it along w).
        """
        sign = torch.where(c >= 0, 1.0, -1.0).to(w.dtype)
        ws = w * sign[:, None]
        need = c.abs()
        a = ws.abs()
        room = torch.where(ws > 0, 1 - p, p).clamp_min(0)
        scale = torch.ones_like(a) if self.norm == "linf" else a
        kink = torch.where(scale > 0, room / scale.clamp_min(_TINY), torch.full_like(a, float("inf")))
        kink, order = kink.sort(1)
        a_s, room_s, scale_s = a.gather(1, order), room.gather(1, order), scale.gather(1, order)
        saturated = (a_s * room_s).cumsum(1) - a_s * room_s  # reach of the coordinates before each kink
        slope = (a_s * scale_s).flip(1).cumsum(1).flip(1)  # d reach / d tau of the coordinates from it on
        reach = saturated + torch.where(slope > 0, kink.clamp_max(torch.finfo(a.dtype).max) * slope, 0)
        enough = reach >= need[:, None]
        k = enough.float().argmax(1)  # first kink where the reach suffices
        rows = torch.arange(len(p), device=p.device)
        tau = (need - saturated[rows, k]) / slope[rows, k].clamp_min(_TINY)
        tau = torch.where(enough.any(1), tau, torch.full_like(tau, float("inf")))
        tau = torch.where(need > 0, tau, torch.zeros_like(tau))
        move = torch.minimum(tau[:, None] * scale, room)
        move = torch.where(scale > 0, move, torch.zeros_like(move))
        return ws.sign() * move

    def _unit(self, t: torch.Tensor) -> torch.Tensor:
        return t / per_point(flat_norm(t, self.norm).clamp_min(_TINY), t)


LINF = LpBall("linf")
L2 = LpBall("l2")


def lp_ball(norm: str) -> LpBall:
    """The ball of a norm by name."""
    return LpBall(norm)
