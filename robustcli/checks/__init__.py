"""Check types for `robust eval`, by the name a config's `type:` uses."""

from __future__ import annotations

from robustcli.checks.attack import ATTACK_CHECK
from robustcli.checks.base import CheckOutcome, CheckType, EvalContext, KeySpec, MetricSpec
from robustcli.checks.scaling import SCALING_CHECK
from robustcli.checks.strong import STRONG_CHECK

CHECK_TYPES: dict[str, CheckType] = {c.name: c for c in (ATTACK_CHECK, STRONG_CHECK, SCALING_CHECK)}

# Names a config may use that need an engine this build does not contain: name -> why.
NOT_AVAILABLE: dict[str, str] = {
    "certify": "check type 'certify' needs the certification engine (certify/, issue #3), which this build lacks",
}

__all__ = ["CHECK_TYPES", "NOT_AVAILABLE", "CheckOutcome", "CheckType", "EvalContext", "KeySpec", "MetricSpec"]
