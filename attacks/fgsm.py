"""Fast gradient sign method (Goodfellow et al. 2015, eq. 3): x' = clip(x + eps * sign(grad_x loss))."""

from __future__ import annotations

from robustcli.attacks.pgd import PGDLinf


class FGSM(PGDLinf):
    """One full-size signed-gradient step from the clean input, no random start."""

    name = "fgsm"
    single_step = True
    options = ()  # no steps, no restarts: one deterministic step

    def __init__(self, loss: str = "ce"):
        super().__init__(steps=1, rel_stepsize=1.0, random_start=False, restarts=1, loss=loss)
