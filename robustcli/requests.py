"""Requests: what one engine call is asked to do, with its defaults and validation in one place.

A Click command and a `robust eval` check build the same request from the values a user gave
(flags, a `--config` file, or a check in an eval config), so a rule such as "a Linf budget is at
most 1" is written once, here. A request validates itself when built and raises `OptionError`,
which names the option by its long flag name (`eps`, `pgd-steps`); the command shows it as
`--eps ...`, the eval config as `checks[0].eps ...` with the file and line.

Fields are named like the long flags with underscores (`eps_l2` is `--eps-l2`), so a mapping of
flag names to values builds a request with `from_options`.
"""

from __future__ import annotations

import math

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

from robustcli.attacks.cw import CW_PRESETS
from robustcli.attacks.foolbox_backend import FOOLBOX_NAMES
from robustcli.attacks.registry import ATTACKS, accepted_options, make_attack
from robustcli.attacks.suite import SUITES
from robustcli.certify.bounders import METHODS as BOUND_METHODS
from robustcli.certify.bounders import build_bounder
from robustcli.certify.lirpa import auto_lirpa
from robustcli.certify.verify import METHODS
from robustcli.core.errors import InputError

LINF_MAX_EPS = 1.0  # inputs live in [0, 1]: a larger Linf budget can reach any image
ATTACK_DEFAULT_EPS = {"linf": (0.1, 0.2, 0.3), "l2": (0.5, 1.0, 2.0)}
CERTIFY_DEFAULT_EPS = {"linf": (0.1,), "l2": (0.5,)}


class OptionError(InputError):
    """A bad option value. `option` is the long flag name without dashes; `detail` follows it.

    `str(e)` reads as the command line shows it (`--steps must be >= 1, got 0`); an eval config
    puts its own location in front of `detail` instead (see `located`).
    """

    def __init__(self, option: str, detail: str):
        super().__init__(f"--{option} {detail}")
        self.option = option
        self.detail = detail

    def located(self, where: str) -> str:
        """The message with `where` (e.g. `checks[0]`) in place of the flag."""
        return f"{where}.{self.option} {self.detail}"


def check_eps(values: tuple[float, ...], norm: str, option: str = "eps") -> None:
    """Budgets are >= 0, and a Linf budget is at most the [0, 1] pixel range."""
    for e in values:
        if not math.isfinite(e) or e < 0:
            raise OptionError(option, f"must be >= 0 and finite, got {e}")
        if norm == "linf" and e > LINF_MAX_EPS:
            raise OptionError(
                option, f"{e:g} exceeds 1, the whole [0, 1] pixel range of a Linf budget; use a value in [0, 1]"
            )


def check_at_least(minimum: int, **values: int | None) -> None:
    """Each given value (None: not set) is >= minimum; keys are option names with underscores."""
    for name, v in values.items():
        if v is not None and v < minimum:
            raise OptionError(name.replace("_", "-"), f"must be >= {minimum}, got {v}")


R = TypeVar("R")


def from_options(cls: type[R], options: Mapping[str, Any]) -> R:
    """Build a request from flag names (`eps-l2` or `eps_l2`) to values; unknown names are ignored
    (they belong to the caller, e.g. an eval check's `gates`)."""
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {}
    for key, v in options.items():
        name = key.replace("-", "_")
        if name in fields:
            values[name] = tuple(v) if isinstance(v, list) else v
    return cls(**values)


@dataclass(frozen=True)
class Budgets:
    """The eps values each norm runs at, and where they came from (a flag or `default`)."""

    eps: dict[str, tuple[float, ...]]
    source: dict[str, str]


@dataclass(frozen=True)
class AttackRequest:
    """`robust attack` and the eval `attack` check: attacks, budgets per norm, iterations."""

    attack: tuple[str, ...] = ()
    eps: tuple[float, ...] = ()
    eps_l2: tuple[float, ...] = ()
    steps: int | None = None
    restarts: int | None = None
    target: str | None = None
    confidence: float = 0.0
    search_steps: int | None = None  # None: the CW preset's
    cw_preset: str = "cheap"
    backend: str = "ours"
    suite: str | None = None
    suite_norm: str = "linf"
    queries: int | None = None
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "attack", tuple(dict.fromkeys(self.attack)))
        object.__setattr__(self, "eps", tuple(float(e) for e in self.eps))
        object.__setattr__(self, "eps_l2", tuple(float(e) for e in self.eps_l2))
        if unknown := [a for a in self.attack if a not in ATTACKS]:
            raise OptionError("attack", f"{unknown[0]!r} is not one of {', '.join(ATTACKS)}")
        if self.suite is not None and self.suite not in SUITES:
            raise OptionError("suite", f"{self.suite!r} is not one of {', '.join(SUITES)}")
        if self.suite_norm not in ("linf", "l2"):
            raise OptionError("suite-norm", f"{self.suite_norm!r} is not one of linf, l2")
        if self.cw_preset not in CW_PRESETS:
            raise OptionError("cw-preset", f"{self.cw_preset!r} is not one of {', '.join(CW_PRESETS)}")
        check_at_least(1, steps=self.steps, restarts=self.restarts, batch_size=self.batch_size, queries=self.queries)
        check_at_least(0, search_steps=self.search_steps)
        if self.backend not in ("ours", "foolbox"):
            raise OptionError("backend", f"{self.backend!r} is not one of ours, foolbox")
        if self.backend == "foolbox" and (unsupported := [a for a in self.attacks if a not in FOOLBOX_NAMES]):
            raise OptionError(
                "backend", f"foolbox has no {', '.join(unsupported)}; it covers {', '.join(FOOLBOX_NAMES)}"
            )
        budgets = self.budgets()
        default_flag = {"linf": "eps", "l2": "eps-l2"}
        for norm in dict.fromkeys(self.norms):  # only the norms that run: `--eps 4` with L2 attacks alone is fine
            source = budgets.source[norm]
            check_eps(budgets.eps[norm], norm, default_flag[norm] if source == "default" else source[2:])

    @property
    def attacks(self) -> tuple[str, ...]:
        """The chosen attacks; PGD when none is named and no suite is asked for."""
        return self.attack or (() if self.suite else ("pgd",))

    @property
    def norms(self) -> list[str]:
        """The norm of each chosen attack, and the strong suite's norm."""
        return [make_attack(a).norm for a in self.attacks] + ([self.suite_norm] if self.suite else [])

    def budgets(self) -> Budgets:
        """`--eps` is the Linf budget, and the L2 budget too when every chosen attack is L2."""
        only_l2 = bool(self.norms) and all(n == "l2" for n in self.norms)
        eps = {"linf": self.eps or ATTACK_DEFAULT_EPS["linf"]}
        source = {"linf": "--eps" if self.eps else "default"}
        if self.eps_l2:
            eps["l2"], source["l2"] = self.eps_l2, "--eps-l2"
        elif only_l2 and self.eps:
            eps["l2"], source["l2"] = self.eps, "--eps"
        else:
            eps["l2"], source["l2"] = ATTACK_DEFAULT_EPS["l2"], "default"
        return Budgets(eps, source)

    def cw_options(self) -> dict[str, Any]:
        return {"confidence": self.confidence, "binary_search_steps": self.search_steps, "preset": self.cw_preset}

    def cw_settings(self) -> dict[str, Any]:
        """The settings CW runs with: its preset, overridden by --steps / --search-steps."""
        return make_attack("cw", steps=self.steps, **accepted_options("cw", self.cw_options())).settings()


@dataclass(frozen=True)
class CertifyRequest:
    """`robust certify` and the eval `certify` check: budgets, bound methods, the PGD upper bound."""

    eps: tuple[float, ...] = ()
    method: tuple[str, ...] = ()
    norm: str = "linf"
    pgd_steps: int = 40
    pgd_restarts: int = 1
    alpha_iterations: int = 20
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", tuple(dict.fromkeys(self.method)))
        object.__setattr__(self, "eps", tuple(float(e) for e in self.eps))
        if self.norm not in CERTIFY_DEFAULT_EPS:
            raise OptionError("norm", f"{self.norm!r} is not one of linf, l2")
        if unknown := [m for m in self.method if m not in METHODS]:
            raise OptionError("method", f"{unknown[0]!r} is not one of {', '.join(METHODS)}")
        check_eps(self.budgets, self.norm)
        check_at_least(
            1, pgd_steps=self.pgd_steps, pgd_restarts=self.pgd_restarts, batch_size=self.batch_size,
            alpha_iterations=self.alpha_iterations,
        )  # fmt: skip

    @property
    def methods(self) -> tuple[str, ...]:
        return self.method or ("ibp",)

    def check_model(self, model: Any, example: Any = None) -> dict:
        """Fail fast, before any work: a missing optional dependency or an operation a method cannot
        bound. With an example batch, returns the bounders built for it, by method name."""
        for m in self.methods:
            if BOUND_METHODS[m].needs_lirpa:
                auto_lirpa(m)
        if example is None:
            return {}
        from robustcli.attacks.base import eval_mode

        with eval_mode(model):
            return {m: build_bounder(m, model, example, alpha_iterations=self.alpha_iterations) for m in self.methods}

    @property
    def budgets(self) -> tuple[float, ...]:
        return self.eps or CERTIFY_DEFAULT_EPS[self.norm]
