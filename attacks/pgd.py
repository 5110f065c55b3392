"""Projected gradient descent in Linf and L2 (Madry et al. 2018)."""

from __future__ import annotations

from robustcli.attacks.geometry import L2, LINF
from robustcli.attacks.gradient import GradientAttack


class PGDLinf(GradientAttack):
    """PGD in the Linf ball: signed-gradient steps, uniform random start, clipping to the box."""

    name = "pgd"
    norm = "linf"
    ball = LINF


class PGDL2(GradientAttack):
    """PGD in the L2 ball: normalised-gradient steps, start uniform in the ball (as foolbox)."""

    name = "pgd-l2"
    norm = "l2"
    ball = L2
