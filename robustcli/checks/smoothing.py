"""The `smoothing` check: certified L2 accuracy of the randomized-smoothing classifier.

Cohen, Rosenfeld & Kolter 2019 through `robustcli.certify.smoothing`. One sigma per check, so
every gate names one classifier g. Metrics: `smoothed_clean_accuracy` and `abstention_rate`
(PREDICT's binomial test on the n estimation samples), `certified_accuracy` per L2 radius in
`eps` (CERTIFY; each certificate holds with probability >= 1 - alpha), `median_certified_radius`
over correctly certified points. All are g's figures, never the base model's; the accuracy is
not called `clean_accuracy` so that `robust eval` never reports it as the model's.
"""

from __future__ import annotations

import math

from robustcli.checks.base import CheckOutcome, CheckType, EvalContext, KeySpec, MetricSpec, request_problem
from robustcli.requests import SmoothingRequest, from_options
from robustcli.smoothing_report import DEFAULT_ALPHA, DEFAULT_N0, DEFAULT_SAMPLES, run_smoothing_certify


def request(options: dict) -> SmoothingRequest:
    """The check's keys are `robust certify --method smoothing`'s flag names; it takes one sigma."""
    return from_options(SmoothingRequest, options)


def _radii(options: dict) -> tuple[float, ...]:
    return tuple(options["eps"])


def run_smoothing_check(ctx: EvalContext, options: dict, wanted: set[str]) -> CheckOutcome:
    w = ctx.workload
    req = request(options)
    with ctx.progress("smoothing check", len(w.data) * (req.n0 + req.samples)) as advance:
        (row,) = run_smoothing_certify(
            w, req.radii, req.sigma, samples=req.samples, n0=req.n0, alpha=req.alpha,
            batch_size=ctx.batch_size, seed=ctx.seed, advance=lambda k: advance(k),
        )  # fmt: skip
    out = CheckOutcome(time_s=row["time_s"])
    out.values[("smoothed_clean_accuracy", None, None)] = row["clean_accuracy"]
    out.values[("abstention_rate", None, None)] = row["abstention_rate"]
    median = row["median_certified_radius"]
    out.values[("median_certified_radius", None, None)] = math.nan if median is None else median
    for c in row["certified_accuracy"]:
        out.values[("certified_accuracy", None, c["radius"])] = c["accuracy"]
    out.details = {k: v for k, v in row.items() if k != "points"}
    return out


SMOOTHING_CHECK = CheckType(
    name="smoothing",
    help="certified L2 accuracy of the randomized-smoothing classifier (Cohen et al. 2019)",
    keys={
        "sigma": KeySpec("float", required=True, minimum=0.0, help="noise std in [0, 1] pixel units"),
        "eps": KeySpec("floats", required=True, minimum=0.0, help="L2 radii to report certified accuracy at"),
        "samples": KeySpec("int", minimum=1, help=f"noise samples per point (default {DEFAULT_SAMPLES})"),
        "n0": KeySpec("int", minimum=1, help=f"selection samples (default {DEFAULT_N0})"),
        "alpha": KeySpec("float", minimum=0.0, help=f"failure probability (default {DEFAULT_ALPHA})"),
    },
    metrics={
        "smoothed_clean_accuracy": MetricSpec(per_eps=False, help="PREDICT accuracy of the smoothed classifier"),
        "abstention_rate": MetricSpec(per_eps=False),
        "certified_accuracy": MetricSpec(per_eps=True, help="CERTIFY accuracy at L2 radius eps"),
        "median_certified_radius": MetricSpec(per_eps=False),
    },
    flags={},
    run=run_smoothing_check,
    eps_of=_radii,
    validate=lambda options: request_problem(request, options),
)
