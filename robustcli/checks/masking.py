"""The `no_masking_warnings` flag gate and `masking_warnings` metric, from the gradient-masking
diagnostics of `attacks.diagnostics` (issue #5) run on a check's evaluation."""

from __future__ import annotations

from robustcli.attacks.diagnostics import run_diagnostics
from robustcli.attacks.evaluate import Evaluation
from robustcli.checks.base import CheckOutcome, EvalContext

FLAG = "no_masking_warnings"
METRIC = "masking_warnings"


def add_masking(out: CheckOutcome, ctx: EvalContext, evaluation: Evaluation) -> None:
    """Run the diagnostics; record the flag (holds iff no warning), the count and the checks."""
    w = ctx.workload
    diag = run_diagnostics(evaluation, w.model.module, w.data.x, w.data.y, device=w.device, seed=ctx.seed)
    evidence = [f"{x.code}: {x.message}" for x in diag.warnings]
    ran = ", ".join(c.code for c in diag.checks if c.status != "skipped")
    out.flags[FLAG] = (not diag.warnings, evidence or [f"no warnings from {ran}"])
    out.values[(METRIC, None, None)] = float(len(diag.warnings))
    out.details["diagnostics"] = [vars(c) for c in diag.checks]
    out.details["warnings"] = [x.to_dict() for x in diag.warnings]
