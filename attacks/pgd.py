"""Projected gradient descent in Linf and L2 (Madry et al. 2018)."""

from __future__ import annotations

import torch

from robustcli.attacks.gradient import GradientAttack
from robustcli.attacks.norms import flat_norm, per_point


class PGDLinf(GradientAttack):
    """PGD in the Linf ball: signed-gradient steps, uniform random start, clipping to the box."""

    name = "pgd"
    norm = "linf"

    def random_init(self, x, eps, generator):
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * eps

    def ascent_direction(self, grad):
        return grad.sign()

    def project(self, delta, eps):
        return delta.clamp(-eps, eps)


class PGDL2(GradientAttack):
    """PGD in the L2 ball: normalised-gradient steps, start uniform in the ball (as foolbox)."""

    name = "pgd-l2"
    norm = "l2"

    def random_init(self, x, eps, generator):
        d = x[0].numel()
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = direction / per_point(flat_norm(direction, "l2").clamp_min(1e-12), x)
        radius = torch.rand(len(x), generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
        return direction * per_point(radius * eps, x)

    def ascent_direction(self, grad):
        return grad / per_point(flat_norm(grad, "l2").clamp_min(1e-12), grad)

    def project(self, delta, eps):
        n = flat_norm(delta, "l2")
        factor = torch.where(n > eps, eps / n.clamp_min(1e-12), torch.ones_like(n))
        return delta * per_point(factor, delta)
