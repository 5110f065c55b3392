"""What a check type for `robust eval` is: its config keys, the metrics its gates may test, and how
it runs. New check types (certification, the strong suite, analyses) plug in by adding a
`CheckType` to the registry in `robustcli.checks`; config validation and gate evaluation are
generic over them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from robustcli.requests import OptionError
from robustcli.session import Workload


@dataclass(frozen=True)
class KeySpec:
    """A config key: its kind, whether required, allowed values and lower bound."""

    kind: str  # "str", "int", "float", "bool", "floats" (a number or a list), "strs" (a string or a list)
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    help: str = ""


# Keys several check types share, spelled like the commands' flags.
EPS_KEY = KeySpec("floats", required=True, minimum=0.0, help="budgets")
NORM_KEY = KeySpec("str", choices=("linf", "l2"))


@dataclass(frozen=True)
class MetricSpec:
    per_eps: bool  # the metric is measured at each of the check's eps values
    per_attack: bool = False  # the gate may name one attack; default is the worst case over them
    help: str = ""


@dataclass
class EvalContext:
    workload: Workload
    seed: int
    batch_size: int
    progress: Callable[[str, int], Any]  # progress(description, total) -> context manager yielding advance(n)
    keep_samples: bool = False  # attack checks keep adversarial examples and draw a sample of broken points


@dataclass
class CheckOutcome:
    """Measured values keyed by (metric, attack or None, eps or None), flag gates, and details for reports."""

    values: dict[tuple[str, str | None, float | None], float] = field(default_factory=dict)
    flags: dict[str, tuple[bool, list[str]]] = field(default_factory=dict)  # name -> (holds, evidence)
    details: dict = field(default_factory=dict)
    time_s: float = 0.0
    missing: dict[str | None, str] = field(default_factory=dict)  # attack (None: default) -> why no value
    sample: Any = None  # robustcli.image_grid.BrokenSample of broken points, when the context keeps samples

    def lookup(self, metric: str, attack: str | None, eps: float | None) -> float | None:
        for (m, a, e), v in self.values.items():
            if m != metric or a != attack:
                continue
            if (e is None) != (eps is None):
                continue
            if e is None or math.isclose(e, eps, rel_tol=1e-9, abs_tol=1e-12):
                return v
        return None


@dataclass(frozen=True)
class CheckType:
    name: str
    help: str
    keys: dict[str, KeySpec]
    metrics: dict[str, MetricSpec]
    flags: dict[str, str]  # flag gate -> what it asserts
    run: Callable[[EvalContext, dict, set[str]], CheckOutcome]  # (context, options, metrics and flags gates name)
    eps_of: Callable[[dict], tuple[float, ...]] = lambda options: ()
    attacks_of: Callable[[dict], tuple[str, ...]] = lambda options: ()
    # cross-key validation: returns (key, message) for the first problem, None if fine
    validate: Callable[[dict], tuple[str, str] | None] = lambda options: None
    # older key spellings still read (with a deprecation note): old -> current
    old_keys: dict[str, str] = field(default_factory=dict)


def request_problem(build: Callable[[Mapping[str, Any]], Any], options: Mapping[str, Any]) -> tuple[str, str] | None:
    """A check's `validate` through its request: (key, message) of the request's OptionError, or None.

    `build` turns the check's options into the request its command builds, so a value the command
    refuses is refused here with the same words, under the config key of the same name."""
    try:
        build(options)
    except OptionError as e:
        return e.option, e.detail
    return None


def record_evaluation(out: CheckOutcome, evaluation: Any, metrics: tuple[str, ...], default: Callable[[str], bool]) -> None:
    """Put an attack evaluation's clean accuracy and, per (attack, eps), each metric into `out`.

    The row of the attack for which `default(attack)` holds is also the gate default (attack None):
    the worst case over the check's attacks, or its only attack."""
    out.values[("clean_accuracy", None, None)] = evaluation.clean_accuracy
    for o in evaluation.outcomes:
        for metric in metrics:
            out.values[(metric, o.attack, o.eps)] = getattr(o, metric)
            if default(o.attack):
                out.values[(metric, None, o.eps)] = getattr(o, metric)
    out.details = {"clean_accuracy": evaluation.clean_accuracy, "results": [o.summary() for o in evaluation.outcomes]}
