"""The geometry of an Lp ball (Linf and L2) that every gradient attack walks in.

Three operations define projected gradient ascent in a norm ball (Madry et al. 2018, eq. 2):

- the steepest-ascent direction of unit norm for a gradient g: sign(g) for Linf (the dual norm
  is L1), g / ||g||_2 for L2;
- the Euclidean projection of a perturbation onto the eps ball: clipping each coordinate to
  [-eps, eps] for Linf, rescaling to radius eps when outside for L2;
- random starts: uniform inside the ball (PGD: Madry et al. for Linf, foolbox's L2 rule: a
  uniform direction times a radius eps * U^(1/d)) or on its sphere (APGD, Croce & Hein 2020:
  a uniform cube point scaled to Linf norm eps, or a Gaussian direction scaled to L2 norm eps).

PGD, APGD, FAB's final projection and the inner maximisation of adversarial training all take
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

    def _unit(self, t: torch.Tensor) -> torch.Tensor:
        return t / per_point(flat_norm(t, self.norm).clamp_min(_TINY), t)


LINF = LpBall("linf")
L2 = LpBall("l2")


def lp_ball(norm: str) -> LpBall:
    """The ball of a norm by name."""
    return LpBall(norm)
