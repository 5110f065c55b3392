"""The `attack` check: robust accuracy under named attacks at given eps (the foundation's engines).

Metrics: `clean_accuracy`; per eps `robust_accuracy` and `success_rate`, by default the worst case
over the check's attacks (robust only if every attack failed on the point), or one attack's own
value when the gate names `attack`. The flag gate `no_masking_warnings` (and the metric
`masking_warnings`) run the gradient-masking diagnostics of `attacks.diagnostics` on the
check's evaluation.
"""

from __future__ import annotations

import time

from robustcli.attacks.evaluate import WORST_CASE, evaluate
from robustcli.attacks.registry import ATTACKS, make_attack
from robustcli.checks.base import EPS_KEY, CheckOutcome, CheckType, EvalContext, KeySpec, MetricSpec, record_evaluation, request_problem
from robustcli.checks.masking import FLAG, METRIC, add_masking
from robustcli.image_grid import broken_sample
from robustcli.progress import evaluate_units
from robustcli.requests import AttackRequest, from_options


def request(options: dict) -> AttackRequest:
    """The check's keys are `robust attack`'s flag names; its eps is the budget of its one norm."""
    return from_options(AttackRequest, options)


def _eps(options: dict) -> tuple[float, ...]:
    return tuple(options["eps"])


def _attacks(options: dict) -> tuple[str, ...]:
    return tuple(dict.fromkeys(options["attack"]))


def _validate(options: dict) -> tuple[str, str] | None:
    norms = {make_attack(a).norm for a in _attacks(options)}
    if len(norms) > 1:
        return "attack", f"attacks {', '.join(_attacks(options))} mix norms ({', '.join(sorted(norms))}); use one check per norm"
    return request_problem(request, options)


def run_attack_check(ctx: EvalContext, options: dict, wanted: set[str]) -> CheckOutcome:
    w = ctx.workload
    req = request(options)
    budgets = req.budgets().eps  # one norm per check, so every attack runs at the check's eps
    attacks = [make_attack(a, steps=req.steps, restarts=req.restarts) for a in req.attacks]
    plan = [(a, list(budgets[a.norm])) for a in attacks]
    t0 = time.perf_counter()
    with ctx.progress("attack check", evaluate_units(plan, len(w.data))) as advance:
        result = evaluate(
            w.model.module, w.data.x, w.data.y, plan,
            device=w.device, batch_size=ctx.batch_size, seed=ctx.seed, on_batch=lambda k: advance(k),
            keep_adversarials=ctx.keep_samples,
        )  # fmt: skip
    out = CheckOutcome(time_s=time.perf_counter() - t0)
    single = len(plan) == 1
    record_evaluation(out, result, ("robust_accuracy", "success_rate"), lambda a: a == WORST_CASE or single)
    if ctx.keep_samples:
        out.sample = broken_sample(result, w.model.module, w.data.x, w.data.y, device=w.device)
    if wanted & {FLAG, METRIC} or options.get("diagnostics", False):
        add_masking(out, ctx, result)
    return out


ATTACK_CHECK = CheckType(
    name="attack",
    help="robust accuracy under attacks at fixed eps",
    keys={
        "attack": KeySpec("strs", required=True, choices=tuple(ATTACKS), help="attack names"),
        "eps": EPS_KEY,
        "steps": KeySpec("int", minimum=1, help="iterations (PGD default 40)"),
        "restarts": KeySpec("int", minimum=1, help="PGD restarts"),
        "diagnostics": KeySpec("bool", help="run the gradient-masking diagnostics even without a gate on them"),
    },
    metrics={
        "clean_accuracy": MetricSpec(per_eps=False),
        "robust_accuracy": MetricSpec(per_eps=True, per_attack=True),
        "success_rate": MetricSpec(per_eps=True, per_attack=True),
        METRIC: MetricSpec(per_eps=False, help="number of gradient-masking warnings"),
    },
    flags={FLAG: "the gradient-masking diagnostics raise no warning"},
    run=run_attack_check,
    eps_of=_eps,
    attacks_of=lambda options: (*_attacks(options), WORST_CASE),
    validate=_validate,
    old_keys={"attacks": "attack"},
)
