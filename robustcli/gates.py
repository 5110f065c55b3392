"""Gates of `robust eval`: a threshold on a measured metric, or a flag that must hold.

Written in a config either as a string

    robust_accuracy >= 0.6 at eps=0.1        (also `@ eps=0.1`, `at eps 0.1`)
    clean_accuracy > 0.9
    no_masking_warnings                      (a flag gate)

or as a mapping `{metric: robust_accuracy, op: ">=", value: 0.6, eps: 0.1, attack: pgd}` when a
gate tests one attack instead of the worst case over the check's attacks.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from robustcli.checks.base import CheckOutcome

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_THRESHOLD = re.compile(
    rf"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>>=|<=|==|>|<)\s*(?P<value>{_NUMBER})"
    rf"(?:\s*(?:at|@)\s*eps\s*=?\s*(?P<eps>{_NUMBER}))?\s*$"
)
_FLAG = re.compile(r"^\s*(?P<flag>[A-Za-z_][A-Za-z0-9_]*)\s*$")


class GateSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Gate:
    metric: str  # metric or flag name
    op: str | None  # None for a flag gate
    value: float | None
    eps: float | None = None
    attack: str | None = None

    @property
    def is_flag(self) -> bool:
        return self.op is None

    @property
    def text(self) -> str:
        if self.is_flag:
            return self.metric
        s = f"{self.metric}{'[' + self.attack + ']' if self.attack else ''} {self.op} {self.value:g}"
        return s + (f" at eps={self.eps:g}" if self.eps is not None else "")


def parse_gate_string(text: str) -> Gate:
    m = _THRESHOLD.match(text)
    if m:
        eps = m.group("eps")
        return Gate(m.group("metric"), m.group("op"), float(m.group("value")), None if eps is None else float(eps))
    m = _FLAG.match(text)
    if m:
        return Gate(m.group("flag"), None, None)
    raise GateSyntaxError(
        f"cannot read gate {text!r}; write 'METRIC OP NUMBER [at eps=NUMBER]' "
        "(OP one of >=, <=, >, <, ==), e.g. 'robust_accuracy >= 0.6 at eps=0.1', or a flag such as no_masking_warnings"
    )


@dataclass
class GateResult:
    check: str
    gate: str
    passed: bool
    value: float | None  # the measured value (None for flags or when not measured)
    message: str  # why it failed, or the evidence

    def summary(self) -> dict:
        return {"check": self.check, "gate": self.gate, "passed": self.passed, "value": self.value, "message": self.message}


def evaluate_gate(check: str, gate: Gate, outcome: CheckOutcome) -> GateResult:
    if gate.is_flag:
        holds, evidence = outcome.flags.get(gate.metric, (False, [f"{gate.metric} was not measured"]))
        msg = "; ".join(evidence) if evidence else ("holds" if holds else "does not hold")
        return GateResult(check, gate.text, holds, None, msg)
    value = outcome.lookup(gate.metric, gate.attack, gate.eps)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        problem = outcome.missing.get(gate.attack) or f"{gate.metric} was not measured"
        return GateResult(check, gate.text, False, None, problem)
    passed = bool(OPS[gate.op](value, gate.value))
    verdict = "holds" if passed else "fails"
    return GateResult(check, gate.text, passed, float(value), f"measured {value:.4g}, required {gate.op} {gate.value:g}: {verdict}")
