"""Requests of the property verifier: what one `robust certify --spec` or `robust vnncomp` run asks
`certify.spec_verify.verify_property` to do, with defaults and validation in one place (the pattern
of `robustcli.requests`).

Both front ends run the same staged verifier on VNNLIB properties: a PGD attack on the property's
input box, then bounds in order of cost (IBP, CROWN, alpha-CROWN; Zhang et al. 2018 / Xu et al.
2021), then branch and bound. `VerifyRequest` holds the options they share: the stages, the time
limit, the alpha-CROWN iterations, the branch-and-bound split and the seed. The attack's budget is
spelled differently by the two commands: `certify --spec` reuses certify's `--pgd-steps` /
`--pgd-restarts` (whose certify defaults, 40 and 1, size the dataset PGD upper bound, so the spec
attack keeps its own stronger defaults unless the user names them), while `vnncomp` has
`--attack-steps` / `--attack-restarts`. Each subclass owns its spelling, so an `OptionError` names
the flag the user typed. `VnncompRequest` adds the instance limit and the worker count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from robustcli.certify.spec_verify import BAB_BOUNDS, BAB_SPLITS, METHODS
from robustcli.requests import OptionError, check_at_least

SPEC_ATTACK_STEPS = 50  # the spec attack's PGD steps and restarts per output case
SPEC_ATTACK_RESTARTS = 10
BOUND_STAGES = tuple(m for m in METHODS if m != "attack")  # the stages after the attack, by cost


@dataclass(frozen=True)
class VerifyRequest:
    """The verifier options `certify --spec` and `vnncomp` share. `timeout` None: no limit (for
    `vnncomp`, each instance's own CSV column). Subclasses give the attack budget and the stages."""

    method: tuple[str, ...] = ()
    timeout: float | None = None
    alpha_iterations: int = 20
    bab_split: str = "auto"
    bab_bounds: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", tuple(dict.fromkeys(self.method)))
        if self.timeout is not None and not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise OptionError("timeout", f"must be > 0, got {self.timeout}")
        self.check_counts()
        if self.bab_split not in BAB_SPLITS:
            raise OptionError("bab-split", f"{self.bab_split!r} is not one of {', '.join(BAB_SPLITS)}")
        if self.bab_bounds not in BAB_BOUNDS:
            raise OptionError("bab-bounds", f"{self.bab_bounds!r} is not one of {', '.join(BAB_BOUNDS)}")
        self.check_methods()

    def check_counts(self) -> None:
        """The subclass's counts, in the order its command lists them; alpha-iterations last."""
        check_at_least(1, alpha_iterations=self.alpha_iterations)

    def check_methods(self) -> None:
        if unknown := [m for m in self.method if m not in METHODS]:
            raise OptionError("method", f"{unknown[0]!r} is not one of {', '.join(METHODS)}")

    @property
    def methods(self) -> tuple[str, ...]:
        """The stages in the order they run."""
        return self.method or METHODS

    def attack_budget(self) -> tuple[int, int]:
        """(PGD steps, restarts) of the attack stage."""
        return SPEC_ATTACK_STEPS, SPEC_ATTACK_RESTARTS

    def verifier_options(self) -> dict[str, Any]:
        """The keyword arguments of `verify_property` (and of `run_benchmark`, which passes them on)."""
        steps, restarts = self.attack_budget()
        return {
            "methods": self.methods, "timeout": self.timeout, "seed": self.seed, "attack_steps": steps,
            "attack_restarts": restarts, "alpha_iterations": self.alpha_iterations, "bab_split": self.bab_split,
            "bab_bounds": self.bab_bounds,
        }  # fmt: skip


@dataclass(frozen=True)
class SpecRequest(VerifyRequest):
    """`robust certify --spec prop.vnnlib`: the attack, then the chosen bound stages in order of cost
    (all of them, branch and bound last, when none is chosen). `pgd_steps` / `pgd_restarts` None: the
    spec attack's own defaults; the command passes them only when the user named them."""

    pgd_steps: int | None = None
    pgd_restarts: int | None = None

    def check_counts(self) -> None:
        steps, restarts = self.attack_budget()
        check_at_least(1, pgd_steps=steps, pgd_restarts=restarts)
        super().check_counts()

    def check_methods(self) -> None:
        # `--method` is shared with the dataset path, whose methods (crown-ibp, lirpa-*) have no spec engine.
        if unsupported := [m for m in self.method if m not in BOUND_STAGES]:
            raise OptionError(
                "method", f"{unsupported[0]} is not available with --spec; use {', '.join(BOUND_STAGES)} "
                "(default: all, in that order)",
            )  # fmt: skip

    @property
    def methods(self) -> tuple[str, ...]:
        chosen = [m for m in BOUND_STAGES if m in self.method] if self.method else list(BOUND_STAGES)
        return ("attack", *chosen)

    def attack_budget(self) -> tuple[int, int]:
        return (
            SPEC_ATTACK_STEPS if self.pgd_steps is None else self.pgd_steps,
            SPEC_ATTACK_RESTARTS if self.pgd_restarts is None else self.pgd_restarts,
        )


@dataclass(frozen=True)
class VnncompRequest(VerifyRequest):
    """`robust vnncomp`: the verifier options, the attack budget, and how many instances run and in
    how many worker processes. `limit` None: every instance of the CSV."""

    attack_steps: int = SPEC_ATTACK_STEPS
    attack_restarts: int = SPEC_ATTACK_RESTARTS
    limit: int | None = None
    jobs: int = 1

    def check_counts(self) -> None:
        check_at_least(1, limit=self.limit, jobs=self.jobs, attack_steps=self.attack_steps,
                       attack_restarts=self.attack_restarts)  # fmt: skip
        super().check_counts()

    def attack_budget(self) -> tuple[int, int]:
        return self.attack_steps, self.attack_restarts
