"""Attacks by name, as the CLI and configs name them: the one place a new attack is added.

Each entry builds an attack from the options a user may give (`steps`, `restarts`, `queries`,
...; None means the attack's default). What kind of attack it is (loss family, gradient-free,
single-step, targeted, norm, the options it takes) is declared by the attack itself
(`Attack.traits`), so the diagnostics and the CLI need no list of names.
"""

from __future__ import annotations

from typing import Callable

from robustcli.attacks.apgd import APGD
from robustcli.attacks.base import Attack
from robustcli.attacks.cw import CarliniWagnerL2
from robustcli.attacks.fab import FABTargeted
from robustcli.attacks.fgsm import FGSM
from robustcli.attacks.pgd import PGDL2, PGDLinf
from robustcli.attacks.square import SquareL2, SquareLinf
from robustcli.attacks.traits import AttackTraits


def _pgd(cls):
    def make(steps: int | None = None, restarts: int | None = None, **kw) -> Attack:
        return cls(steps=steps or 40, restarts=restarts or 1, **kw)

    return make


def _cw(
    steps: int | None = None,
    restarts: int | None = None,
    preset: str | None = None,
    binary_search_steps: int | None = None,
    **kw,
) -> Attack:
    # the preset sets steps, search steps, c0 and lr; an explicit steps / search steps overrides it
    overrides = {k: v for k, v in (("steps", steps), ("binary_search_steps", binary_search_steps)) if v is not None}
    return CarliniWagnerL2.from_preset(preset or "cheap", **overrides, **kw)


def _fgsm(steps: int | None = None, restarts: int | None = None, **kw) -> Attack:
    return FGSM(**kw)


def _apgd(norm: str, loss: str):
    def make(steps: int | None = None, restarts: int | None = None, **kw) -> Attack:
        return APGD(norm=norm, loss=loss, steps=steps or 100, restarts=restarts or 1, **kw)

    return make


def _square(cls):
    def make(steps: int | None = None, restarts: int | None = None, queries: int | None = None, **kw) -> Attack:
        # `steps` (gradient iterations) does not apply; the budget is `queries` (AutoAttack "standard": 5,000).
        return cls(queries=queries or 5000, restarts=restarts or 1, **kw)

    return make


def _fab(norm: str):
    def make(steps: int | None = None, restarts: int | None = None, **kw) -> Attack:
        return FABTargeted(norm=norm, steps=steps or 100, **kw)

    return make


# name -> factory(steps=None, restarts=None, **options); None means the attack's default.
ATTACKS: dict[str, Callable[..., Attack]] = {
    "fgsm": _fgsm,
    "pgd": _pgd(PGDLinf),
    "pgd-l2": _pgd(PGDL2),
    "cw": _cw,
    "apgd-ce": _apgd("linf", "ce"),
    "apgd-dlr": _apgd("linf", "dlr"),
    "apgd-t": _apgd("linf", "dlr-targeted"),
    "apgd-ce-l2": _apgd("l2", "ce"),
    "apgd-dlr-l2": _apgd("l2", "dlr"),
    "apgd-t-l2": _apgd("l2", "dlr-targeted"),
    "fab-t": _fab("linf"),
    "fab-t-l2": _fab("l2"),
    "square": _square(SquareLinf),
    "square-l2": _square(SquareL2),
}


def make_attack(name: str, **options) -> Attack:
    if name not in ATTACKS:
        raise KeyError(name)
    return ATTACKS[name](**options)


def attack_traits(name: str) -> AttackTraits:
    """The traits of a registered attack (with its defaults; the options do not change its kind)."""
    return make_attack(name).traits


def accepted_options(name: str, options: dict) -> dict:
    """The subset of `options` that the attack `name` takes (see `AttackTraits.options`)."""
    takes = attack_traits(name).options
    return {k: v for k, v in options.items() if k in takes}
