"""The `certify` check: verified accuracy from the certification engine (`certify.verify`, issue #3).

Metrics: `clean_accuracy`; per eps `verified_accuracy` and `pgd_accuracy` (PGD robust accuracy on
the same points, an upper bound). A gate may name one bound method (`method: crown`); by default
`verified_accuracy` counts a point verified when any of the check's methods verifies it (each
bound is sound, so their union is too). `certify_dataset` cross-checks verified <= PGD-robust <=
correct point by point and raises on a violation (a bug, not a gate failure).
"""

from __future__ import annotations

import time

import torch

from robustcli.certify.verify import METHODS, certify_dataset
from robustcli.checks.base import EPS_KEY, NORM_KEY, CheckOutcome, CheckType, EvalContext, KeySpec, MetricSpec, request_problem
from robustcli.requests import CertifyRequest, from_options

ANY_METHOD = "any"


def request(options: dict) -> CertifyRequest:
    """The check's keys are `robust certify`'s flag names (`method`, `pgd-steps`)."""
    return from_options(CertifyRequest, options)


def _eps(options: dict) -> tuple[float, ...]:
    return tuple(options["eps"])


def _methods(options: dict) -> tuple[str, ...]:
    return tuple(dict.fromkeys(options.get("method", ("ibp",))))


def run_certify_check(ctx: EvalContext, options: dict, wanted: set[str]) -> CheckOutcome:
    w = ctx.workload
    req = request(options)
    methods, eps = req.methods, req.budgets
    built = req.check_model(w.model.module, w.data.x[:2].to(w.device) if len(w.data) else None)  # fails fast
    t0 = time.perf_counter()
    with ctx.progress("certify check", len(w.data) * len(eps) * (len(methods) + 1)) as advance:
        result = certify_dataset(
            w.model.module, w.data.x, w.data.y, eps, methods, req.norm,
            num_classes=w.num_classes, batch_size=ctx.batch_size, seed=ctx.seed,
            pgd_steps=req.pgd_steps, pgd_restarts=req.pgd_restarts,
            alpha_iterations=req.alpha_iterations, device=w.device, on_batch=lambda k: advance(k), bounders=built,
        )  # fmt: skip
    out = CheckOutcome(time_s=time.perf_counter() - t0)
    out.values[("clean_accuracy", None, None)] = result.clean_accuracy
    union: dict[float, torch.Tensor] = {}
    for o in result.outcomes:
        out.values[("verified_accuracy", o.method, o.eps)] = o.verified_accuracy
        out.values[("pgd_accuracy", None, o.eps)] = o.pgd_accuracy
        union[o.eps] = o.verified if o.eps not in union else union[o.eps] | o.verified
    for e, verified in union.items():
        value = verified.float().mean().item()
        out.values[("verified_accuracy", None, e)] = value
        out.values[("verified_accuracy", ANY_METHOD, e)] = value
    out.details = {"clean_accuracy": result.clean_accuracy, "results": [o.summary() for o in result.outcomes]}
    return out


CERTIFY_CHECK = CheckType(
    name="certify",
    help="verified accuracy under IBP / CROWN-family bounds, cross-checked against PGD",
    keys={
        "eps": EPS_KEY,
        "method": KeySpec("strs", choices=METHODS, help="bound methods (default ibp)"),
        "norm": NORM_KEY,
        "pgd-steps": KeySpec("int", minimum=1),
        "pgd-restarts": KeySpec("int", minimum=1),
        "alpha-iterations": KeySpec("int", minimum=1),
    },
    metrics={
        "clean_accuracy": MetricSpec(per_eps=False),
        "verified_accuracy": MetricSpec(per_eps=True, per_attack=True, help="per method; default: any method"),
        "pgd_accuracy": MetricSpec(per_eps=True),
    },
    flags={},
    run=run_certify_check,
    eps_of=_eps,
    attacks_of=lambda options: (*_methods(options), ANY_METHOD),
    validate=lambda options: request_problem(request, options),
    old_keys={"methods": "method"},
)
