"""The `scaling` check: power-law exponent of adversarial error vs eps (`analyses.scaling`).

Metrics (per attack; the default is the worst case over the check's attacks, or the single
attack): `gamma`, `gamma_ci_low`, `gamma_ci_high` (t-interval) and `r2`. A curve without a fit
(too few points in the small-eps regime) has no value, so its gates fail with the reason.
"""

from __future__ import annotations

import time

from robustcli.analyses.scaling import scaling_analysis
from robustcli.attacks.evaluate import WORST_CASE
from robustcli.attacks.registry import ATTACKS, make_attack
from robustcli.checks.base import CheckOutcome, CheckType, EvalContext, KeySpec, MetricSpec, request_problem
from robustcli.progress import evaluate_units
from robustcli.requests import OptionError, ScalingRequest, from_options

CHECK_POINTS = 10  # the check's grid is coarser than the command's (12): a CI gate, not a figure


def _attacks(options: dict) -> tuple[str, ...]:
    return tuple(dict.fromkeys(options["attack"]))


def _norm(options: dict) -> str:
    return make_attack(options["attack"][0]).norm


def request(options: dict) -> ScalingRequest:
    """The check's keys are `robust analyze scaling`'s flag names. A check runs attacks of one norm,
    and its `eps-min` / `eps-max` bound that norm's grid (the command's `--eps-l2-min` / `--eps-l2-max`
    for L2 attacks); a problem with them is reported under the key the check wrote."""
    values = {"points": CHECK_POINTS, **options}
    if _norm(options) == "linf":
        return from_options(ScalingRequest, values)
    values = {(f"eps-l2-{k[4:]}" if k in ("eps-min", "eps-max") else k): v for k, v in values.items()}
    try:
        return from_options(ScalingRequest, values)
    except OptionError as e:
        raise OptionError(e.option.replace("eps-l2-", "eps-"), e.detail.replace("eps-l2-", "eps-")) from None


def _validate(options: dict) -> tuple[str, str] | None:
    norms = {make_attack(a).norm for a in _attacks(options)}
    if len(norms) > 1:
        return "attack", "a scaling check takes attacks of one norm; use one check per norm"
    return request_problem(request, options)


def run_scaling_check(ctx: EvalContext, options: dict, wanted: set[str]) -> CheckOutcome:
    w = ctx.workload
    req = request(options)
    attacks = [make_attack(a, steps=req.steps, restarts=req.restarts) for a in req.attacks]
    norm = attacks[0].norm
    grid = req.grid(norm)
    t0 = time.perf_counter()
    units = evaluate_units([(a, grid) for a in attacks], len(w.data)) + len(w.data)  # attacks, then a gradient pass
    with ctx.progress("scaling check", units) as advance:
        result = scaling_analysis(
            w.model.module, w.data.x, w.data.y, attacks, grids={norm: grid}, device=w.device,
            batch_size=ctx.batch_size, seed=ctx.seed, max_error=req.max_error, min_broken=req.min_broken,
            level=req.level, resamples=req.resamples, on_batch=lambda k: advance(k),
        )  # fmt: skip
    out = CheckOutcome(time_s=time.perf_counter() - t0)
    single = len(attacks) == 1
    for c in result.curves:
        keys = [c.attack] + ([None] if c.attack == WORST_CASE or single else [])
        if c.fit is None:
            out.missing.update({k: f"no power-law fit for {c.attack}: {c.fit_problem}" for k in keys})
            continue
        for k in keys:
            out.values[("gamma", k, None)] = c.fit.gamma
            out.values[("gamma_ci_low", k, None)] = c.fit.gamma_ci[0]
            out.values[("gamma_ci_high", k, None)] = c.fit.gamma_ci[1]
            out.values[("r2", k, None)] = c.fit.r2
    out.details = {
        "clean_accuracy": result.clean_accuracy,
        "curves": [
            {"attack": c.attack, "fit": None if c.fit is None else c.fit.summary(), "fit_problem": c.fit_problem}
            for c in result.curves
        ],
    }
    return out


SCALING_CHECK = CheckType(
    name="scaling",
    help="power-law exponent of adversarial error vs eps (Cubuk et al. 2017)",
    keys={
        "attack": KeySpec("strs", required=True, choices=tuple(ATTACKS)),
        "eps-min": KeySpec("float", minimum=0.0),
        "eps-max": KeySpec("float", minimum=0.0),
        "points": KeySpec("int", minimum=3),
        "steps": KeySpec("int", minimum=1),
        "max-error": KeySpec("float", minimum=0.0),
        "min-broken": KeySpec("int", minimum=1),
    },
    metrics={
        "gamma": MetricSpec(per_eps=False, per_attack=True),
        "gamma_ci_low": MetricSpec(per_eps=False, per_attack=True),
        "gamma_ci_high": MetricSpec(per_eps=False, per_attack=True),
        "r2": MetricSpec(per_eps=False, per_attack=True),
    },
    flags={},
    run=run_scaling_check,
    attacks_of=lambda options: (*_attacks(options), WORST_CASE),
    validate=_validate,
    old_keys={"attacks": "attack"},
)
