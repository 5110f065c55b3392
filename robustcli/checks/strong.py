"""The `strong` check: the strong suite (APGD-CE, APGD-T, Square; `attacks.suite`, issue #5) plus
optional extra attacks, with the gradient-masking diagnostics.

Metrics: `clean_accuracy`; per eps `robust_accuracy` (worst case over the suite and the extra
attacks, or one attack's cumulative row when the gate names it); `masking_warnings` (count).
Flag gate: `no_masking_warnings`. The diagnostics always run: their comparisons (e.g. FGSM vs
PGD) need the extra attacks, so list some under `attacks` for a fuller check.
"""

from __future__ import annotations

import time

from robustcli.attacks.evaluate import WORST_CASE, evaluate
from robustcli.attacks.registry import ATTACKS, make_attack
from robustcli.attacks.suite import merge_evaluations, run_strong_suite, strong_suite
from robustcli.checks.base import EPS_KEY, NORM_KEY, CheckOutcome, CheckType, EvalContext, KeySpec, MetricSpec, record_evaluation, request_problem
from robustcli.checks.masking import FLAG, METRIC, add_masking
from robustcli.image_grid import broken_sample
from robustcli.progress import evaluate_units
from robustcli.requests import AttackRequest

DEFAULT_STEPS = 100
DEFAULT_QUERIES = 5000


def _eps(options: dict) -> tuple[float, ...]:
    return tuple(options["eps"])


def _norm(options: dict) -> str:
    return options.get("norm", "linf")


def _attacks(options: dict) -> tuple[str, ...]:
    suite = [a.name for a, _ in strong_suite([1.0], _norm(options))]
    return (*dict.fromkeys([*suite, *options.get("attack", ())]), WORST_CASE)


def request(options: dict) -> AttackRequest:
    """What `robust attack --suite strong --suite-norm NORM --attack ... --eps ...` is asked: the
    suite and the extra attacks (all of the check's norm) at the check's budgets."""
    return AttackRequest(
        attack=tuple(options.get("attack", ())), eps=_eps(options), suite="strong", suite_norm=_norm(options),
        steps=options.get("extra-steps"), queries=options.get("queries"),
    )  # fmt: skip


def _validate(options: dict) -> tuple[str, str] | None:
    norm = _norm(options)
    other = [a for a in options.get("attack", ()) if make_attack(a).norm != norm]
    if other:
        return "attack", f"attacks {', '.join(other)} are not {norm} attacks like the suite (norm: {norm})"
    return request_problem(request, options)


def run_strong_check(ctx: EvalContext, options: dict, wanted: set[str]) -> CheckOutcome:
    w = ctx.workload
    eps = list(_eps(options))
    norm = _norm(options)
    t0 = time.perf_counter()
    extra = [make_attack(a, steps=options.get("extra-steps")) for a in options.get("attack", ())]
    units = evaluate_units(strong_suite(eps, norm) + [(a, eps) for a in extra], len(w.data))
    with ctx.progress("strong check", units) as advance:
        result = run_strong_suite(
            w.model.module, w.data.x, w.data.y, eps, device=w.device, norm=norm,
            steps=options.get("steps", DEFAULT_STEPS), queries=options.get("queries", DEFAULT_QUERIES),
            batch_size=ctx.batch_size, seed=ctx.seed, on_batch=lambda k: advance(k),
            keep_adversarials=ctx.keep_samples,
        )  # fmt: skip
        if extra:
            more = evaluate(
                w.model.module, w.data.x, w.data.y, [(a, eps) for a in extra],
                device=w.device, batch_size=ctx.batch_size, seed=ctx.seed, on_batch=lambda k: advance(k),
                keep_adversarials=ctx.keep_samples,
            )  # fmt: skip
            result = merge_evaluations(result, more)
    out = CheckOutcome()
    record_evaluation(out, result, ("robust_accuracy",), lambda a: a == WORST_CASE)
    if ctx.keep_samples:
        out.sample = broken_sample(result, w.model.module, w.data.x, w.data.y, device=w.device)
    add_masking(out, ctx, result)
    out.time_s = time.perf_counter() - t0
    return out


STRONG_CHECK = CheckType(
    name="strong",
    help="the strong suite (APGD-CE, APGD-T, Square) with gradient-masking diagnostics",
    keys={
        "eps": EPS_KEY,
        "norm": NORM_KEY,
        "steps": KeySpec("int", minimum=1, help=f"APGD iterations (default {DEFAULT_STEPS})"),
        "queries": KeySpec("int", minimum=1, help=f"Square queries (default {DEFAULT_QUERIES})"),
        "attack": KeySpec("strs", choices=tuple(ATTACKS), help="extra attacks to run alongside the suite"),
        "extra-steps": KeySpec("int", minimum=1, help="iterations of the extra attacks"),
    },
    metrics={
        "clean_accuracy": MetricSpec(per_eps=False),
        "robust_accuracy": MetricSpec(per_eps=True, per_attack=True),
        METRIC: MetricSpec(per_eps=False, help="number of gradient-masking warnings"),
    },
    flags={FLAG: "the gradient-masking diagnostics raise no warning"},
    run=run_strong_check,
    eps_of=_eps,
    attacks_of=_attacks,
    validate=_validate,
    old_keys={"attacks": "attack"},
)
