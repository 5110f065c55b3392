"""Attacks by name, as the CLI and configs name them."""

from __future__ import annotations

from typing import Callable

from attacks.base import Attack
from attacks.cw import CarliniWagnerL2
from attacks.fgsm import FGSM
from attacks.pgd import PGDL2, PGDLinf


def _pgd(cls):
    def make(steps: int | None = None, restarts: int | None = None, **kw) -> Attack:
        return cls(steps=steps or 40, restarts=restarts or 1, **kw)

    return make


def _cw(steps: int | None = None, restarts: int | None = None, **kw) -> Attack:
    return CarliniWagnerL2(steps=steps or 100, **kw)


def _fgsm(steps: int | None = None, restarts: int | None = None, **kw) -> Attack:
    return FGSM(**kw)


# name -> factory(steps=None, restarts=None, **options); None means the attack's default.
ATTACKS: dict[str, Callable[..., Attack]] = {
    "fgsm": _fgsm,
    "pgd": _pgd(PGDLinf),
    "pgd-l2": _pgd(PGDL2),
    "cw": _cw,
}


def make_attack(name: str, **options) -> Attack:
    if name not in ATTACKS:
        raise KeyError(name)
    return ATTACKS[name](**options)
