"""Check types for `robust eval`, by the name a config's `type:` uses."""

from __future__ import annotations

from robustcli.checks.attack import ATTACK_CHECK
from robustcli.checks.base import CheckOutcome, CheckType, EvalContext, KeySpec, MetricSpec
from robustcli.checks.certify import CERTIFY_CHECK
from robustcli.checks.scaling import SCALING_CHECK
from robustcli.checks.smoothing import SMOOTHING_CHECK
from robustcli.checks.strong import STRONG_CHECK

CHECK_TYPES: dict[str, CheckType] = {
    c.name: c for c in (ATTACK_CHECK, STRONG_CHECK, CERTIFY_CHECK, SCALING_CHECK, SMOOTHING_CHECK)
}

# Names a config may use that need an engine this build does not contain: name -> why. Empty since
# the certify (#3) and strong (#5) branches were merged; kept for check types still to come.
NOT_AVAILABLE: dict[str, str] = {}

__all__ = ["CHECK_TYPES", "NOT_AVAILABLE", "CheckOutcome", "CheckType", "EvalContext", "KeySpec", "MetricSpec"]
