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

import numpy as np

from robustcli.analyses.powerlaw import DEFAULT_MAX_ERROR, DEFAULT_MIN_BROKEN
from robustcli.analyses.scaling import DEFAULT_RANGE, log_grid
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


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


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
class RuntimeRequest:
    """What every request carries from `--batch-size` and `--seed` (the runtime options); each
    request checks the batch size with its other counts."""

    batch_size: int = 256
    seed: int = 0


@dataclass(frozen=True)
class Budgets:
    """The eps values each norm runs at, and where they came from (a flag or `default`)."""

    eps: dict[str, tuple[float, ...]]
    source: dict[str, str]


@dataclass(frozen=True)
class AttackRequest(RuntimeRequest):
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "attack", tuple(dict.fromkeys(self.attack)))
        object.__setattr__(self, "eps", tuple(float(e) for e in self.eps))
        object.__setattr__(self, "eps_l2", tuple(float(e) for e in self.eps_l2))
        if unknown := [a for a in self.attack if a not in ATTACKS]:
            raise OptionError("attack", f"{unknown[0]!r} is not one of {', '.join(ATTACKS)}")
        if self.target not in (None, "none", "next", "random") and not _is_int(self.target):
            raise OptionError("target", f"must be none, next, random or a class index, got {self.target!r}")
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
class CertifyRequest(RuntimeRequest):
    """`robust certify` and the eval `certify` check: budgets, bound methods, the PGD upper bound."""

    eps: tuple[float, ...] = ()
    method: tuple[str, ...] = ()
    norm: str = "linf"
    pgd_steps: int = 40
    pgd_restarts: int = 1
    alpha_iterations: int = 20

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
            return {m: build_bounder(m, model, example, alpha_iterations=self.alpha_iterations, norm=self.norm)
                    for m in self.methods}

    @property
    def budgets(self) -> tuple[float, ...]:
        return self.eps or CERTIFY_DEFAULT_EPS[self.norm]


def _check_png(path: str | None, option: str) -> None:
    """A figure goes to a `.png` file; the check runs before any work, so nothing is half-written."""
    if path and not path.lower().endswith(".png"):
        raise OptionError(option, f"{path}: use a file name ending in .png")


@dataclass(frozen=True)
class ScalingRequest(RuntimeRequest):
    """`robust analyze scaling` and the eval `scaling` check: attacks, the log-spaced eps grid per
    norm, and the power-law fit's regime and intervals (Cubuk et al. 2017)."""

    attack: tuple[str, ...] = ()
    eps_min: float | None = None  # None: the norm's DEFAULT_RANGE
    eps_max: float | None = None
    eps_l2_min: float | None = None
    eps_l2_max: float | None = None
    points: int = 12
    steps: int | None = None
    restarts: int | None = None
    max_error: float = DEFAULT_MAX_ERROR
    min_broken: int = DEFAULT_MIN_BROKEN
    level: float = 0.95
    resamples: int = 1000
    png: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "attack", tuple(dict.fromkeys(self.attack)))
        if unknown := [a for a in self.attack if a not in ATTACKS]:
            raise OptionError("attack", f"{unknown[0]!r} is not one of {', '.join(ATTACKS)}")
        if self.points < 3:
            raise OptionError("points", f"must be >= 3 (a fit with an interval needs 3), got {self.points}")
        check_at_least(1, steps=self.steps, restarts=self.restarts, batch_size=self.batch_size, min_broken=self.min_broken)
        if not 0 < self.max_error <= 1:
            raise OptionError("max-error", f"must be in (0, 1], got {self.max_error}")
        if not 0 < self.level < 1:
            raise OptionError("level", f"must be in (0, 1), got {self.level}")
        if self.resamples < 0:
            raise OptionError("resamples", f"must be >= 0, got {self.resamples}")
        _check_png(self.png, "png")
        for norm in self.norms:  # only the grids that run: L2 bounds do not matter to Linf attacks
            self.eps_range(norm)

    @property
    def attacks(self) -> tuple[str, ...]:
        return self.attack or ("fgsm", "pgd")

    @property
    def norms(self) -> tuple[str, ...]:
        """The norms of the chosen attacks, in order of first appearance."""
        return tuple(dict.fromkeys(make_attack(a).norm for a in self.attacks))

    def eps_range(self, norm: str) -> tuple[float, float]:
        """The grid's (smallest, largest) eps for `norm`: 0 < min < max, and max <= 1 for Linf."""
        prefix = "eps" if norm == "linf" else "eps-l2"
        given = (self.eps_min, self.eps_max) if norm == "linf" else (self.eps_l2_min, self.eps_l2_max)
        lo, hi = (DEFAULT_RANGE[norm][i] if v is None else float(v) for i, v in enumerate(given))
        if not 0 < lo < hi:
            raise OptionError(f"{prefix}-min", f"must be > 0 and below {prefix}-max, got {lo:g} and {hi:g}")
        if norm == "linf" and hi > LINF_MAX_EPS:
            raise OptionError("eps-max", f"{hi:g} exceeds 1, the whole [0, 1] pixel range")
        return lo, hi

    def grid(self, norm: str) -> np.ndarray:
        """`points` log-spaced budgets from the norm's smallest to its largest eps."""
        return log_grid(*self.eps_range(norm), self.points)

    def grids(self) -> dict[str, np.ndarray]:
        return {norm: self.grid(norm) for norm in self.norms}


# Cohen et al. use n = 100,000; this CPU-sized default keeps a run on a few hundred points in
# minutes. With alpha = 0.001 it caps the radius at sigma * Phi^-1(0.001 ** (1 / n)) = 2.46 sigma.
SMOOTHING_DEFAULT_SAMPLES = 1000
SMOOTHING_DEFAULT_N0 = 100
SMOOTHING_DEFAULT_ALPHA = 0.001
SMOOTHING_DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class SmoothingRequest(RuntimeRequest):
    """`robust certify --method smoothing` and the eval `smoothing` check: randomized smoothing's
    noise levels, sample counts and failure probability (Cohen et al. 2019, CERTIFY / PREDICT), and
    the L2 radii its certified accuracy is reported at.

    The engine (`certify.smoothing.check_smoothing_parameters`) guards the same ranges for callers
    that bypass the CLI; here they are checked before any work, naming the option."""

    sigma: tuple[float, ...] = ()
    eps: tuple[float, ...] = ()  # L2 radii; () means SMOOTHING_DEFAULT_RADII
    samples: int = SMOOTHING_DEFAULT_SAMPLES
    n0: int = SMOOTHING_DEFAULT_N0
    alpha: float = SMOOTHING_DEFAULT_ALPHA

    def __post_init__(self) -> None:
        sigma = (self.sigma,) if isinstance(self.sigma, (int, float)) else self.sigma
        object.__setattr__(self, "sigma", tuple(dict.fromkeys(float(s) for s in sigma)))  # a repeat repeats a row
        object.__setattr__(self, "eps", tuple(float(e) for e in self.eps))
        if not self.sigma:
            raise OptionError("sigma", "is missing: --method smoothing needs --sigma (e.g. --sigma 0.25 0.5)")
        for s in self.sigma:
            if not s > 0 or not math.isfinite(s):
                raise OptionError("sigma", f"must be > 0 (the noise standard deviation in [0, 1] pixel units), got {s:g}")
        if not 0 < self.alpha < 1:
            raise OptionError("alpha", f"must be strictly between 0 and 1 (e.g. 0.001), got {self.alpha:g}")
        check_at_least(1, n0=self.n0, samples=self.samples, batch_size=self.batch_size)
        if self.n0 > self.samples:
            raise OptionError(
                "n0", f"({self.n0}) must not exceed --samples ({self.samples}): selection needs fewer samples than estimation"
            )
        if any(not r >= 0 for r in self.radii):
            raise OptionError("eps", f"(L2 radii for smoothing) must be >= 0, got {', '.join(f'{r:g}' for r in self.eps)}")

    @property
    def radii(self) -> tuple[float, ...]:
        """The radii certified accuracy is reported at, ascending, each once."""
        return tuple(sorted(set(self.eps or SMOOTHING_DEFAULT_RADII)))


@dataclass(frozen=True)
class ThresholdRequest(RuntimeRequest):
    """`robust threshold`: the unsafe classes, the calibration split, the FNR target and its
    one-sided Clopper-Pearson level, and the PGD attack on unsafe inputs."""

    unsafe_class: tuple[int, ...] = ()
    calibration_share: float = 0.5
    target_fnr: float = 0.01
    confidence: float = 0.95
    attack: str = "pgd"
    eps: float = 0.1
    steps: int = 40
    restarts: int = 1
    plot: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "unsafe_class", tuple(self.unsafe_class))
        if not self.unsafe_class:
            raise OptionError("unsafe-class", "is missing: name the class(es) the filter must block")
        if not 0 < self.calibration_share < 1:
            raise OptionError("calibration-share", f"must lie in (0, 1), got {self.calibration_share}")
        if not 0 < self.target_fnr < 1:
            raise OptionError("target-fnr", f"must lie in (0, 1), got {self.target_fnr}")
        if not 0 < self.confidence < 1:
            raise OptionError("confidence", f"must lie in (0, 1), got {self.confidence}")
        if self.attack not in ("pgd", "none"):
            raise OptionError("attack", f"{self.attack!r} is not one of pgd, none")
        if not 0 <= self.eps <= LINF_MAX_EPS:
            raise OptionError("eps", f"must lie in [0, 1], got {self.eps}")
        check_at_least(1, steps=self.steps, restarts=self.restarts, batch_size=self.batch_size)
        if self.plot and not self.plot.endswith(".png"):
            raise OptionError("plot", f"{self.plot}: use a .png file name")

    def check_classes(self, num_classes: int) -> None:
        """Every unsafe class is one of the model's."""
        if bad := [c for c in self.unsafe_class if not 0 <= c < num_classes]:
            raise OptionError("unsafe-class", f"{bad[0]} is outside the model's classes 0..{num_classes - 1}")

    @property
    def unsafe(self) -> tuple[int, ...]:
        """The unsafe classes, ascending, each once."""
        return tuple(sorted(set(self.unsafe_class)))


@dataclass(frozen=True)
class TightnessRequest(RuntimeRequest):
    """`robust tightness`: the Linf budget of the radii and whether to add the at-initialisation row
    (Mao et al. 2023's tau is eps-free; the radii are not)."""

    eps: float = 0.1
    at_init: bool = False

    def __post_init__(self) -> None:
        check_eps((self.eps,), "linf")
        check_at_least(1, batch_size=self.batch_size)


TILTING_DEFAULT_CLASSES = (3, 7)
TILTING_DEFAULT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class TiltingRequest(RuntimeRequest):
    """`robust analyze tilting`: the class pair, and either a sweep of L2 weight decays of logistic
    regressions or (with `model`) the model's local linear map (Tanay & Griffin 2016)."""

    classes: tuple[int, ...] = ()  # () means TILTING_DEFAULT_CLASSES
    weight_decay: tuple[float, ...] = ()  # () means TILTING_DEFAULT_DECAYS
    max_iter: int = 500
    model: str | None = None
    n: int | None = None
    png: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes) or TILTING_DEFAULT_CLASSES)
        object.__setattr__(self, "weight_decay", tuple(float(w) for w in self.weight_decay))
        if len(self.classes) != 2 or self.classes[0] == self.classes[1]:
            got = " ".join(map(str, self.classes)) or "none"
            raise OptionError("classes", f"needs two different class labels, got {got}")
        if any(c < 0 for c in self.classes):
            raise OptionError("classes", "must be non-negative labels")
        if self.model and self.weight_decay:
            raise OptionError(
                "weight-decay",
                "sweeps logistic regressions; with --model the model's local linear map is analysed instead: pass one of them",
            )
        check_at_least(1, max_iter=self.max_iter, batch_size=self.batch_size)
        if any(not wd >= 0 for wd in self.weight_decay):
            raise OptionError("weight-decay", "values must be >= 0")
        if self.n is not None and self.n < 1:
            raise OptionError("n", f"must be positive, got {self.n}")
        _check_png(self.png, "png")

    @property
    def decays(self) -> tuple[float, ...]:
        return self.weight_decay or TILTING_DEFAULT_DECAYS

