"""Gradient-masking diagnostics: signs that an evaluation overestimates robustness.

After the checklists of Athalye et al. 2018 (section 3.1, "identifying obfuscated gradients"),
Carlini et al. 2019 ("On evaluating adversarial robustness", section 5) and Croce & Hein 2020:

- `iterative-weaker-than-single-step`: an iterative CE attack (PGD, APGD-CE) leaves more points
  robust than a single-step one (FGSM);
- `margin-stronger-than-ce`: a margin-family attack (CW, APGD-DLR, APGD-T, PGD on the margin)
  breaks many points an iterative cross-entropy attack left robust at the same budget (CE
  gradients vanish: saturated softmax);
- `black-box-stronger-than-white-box`: a gradient-free attack (Square) breaks points every
  gradient attack left robust;
- `large-eps-not-broken`: PGD-CE at Linf eps = 1 (every image reachable) does not bring a small
  subset to ~0% robust accuracy (an unbounded sanity check, run here on `probe_points` points);
- `vanishing-gradients`: the share of points whose CE input gradient norm is ~0 (< 1e-12) or NaN;
- `not-monotone-in-eps`: some attack's robust accuracy rises with eps.

Attacks are sorted into these roles by the traits they declare (`attacks.traits`), carried on
each row of the evaluation; a row built without traits is looked up in the registry by name.
The first three and the last compare rows of an `Evaluation` point by point at the same (norm,
eps); the probes need the model and data and cost one backward pass and a 20-step PGD on the
probe subset. Each check records what it ran on; each warning carries its evidence in numbers
and what to do about it. Thresholds (below) are chosen so that an ordinary trained model passes
and a model with a saturated softmax (logits x 1e4) fails; they are documented in docs/strong.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from robustcli.attacks.base import input_gradient
from robustcli.attacks.evaluate import WORST_CASE, AttackOutcome, Evaluation
from robustcli.attacks.losses import cross_entropy
from robustcli.attacks.pgd import PGDLinf
from robustcli.attacks.registry import ATTACKS, attack_traits
from robustcli.attacks.traits import AttackTraits
from robustcli.core.nn import eval_mode

ITERATIVE_TOLERANCE = 0.01  # PGD may leave this share more points robust than FGSM (noise)
MARGIN_GAP = 0.05  # share of all points a margin attack breaks that a CE attack left robust
BLACK_BOX_GAP = 0.01  # share of all points Square breaks that every white-box attack left robust
MONOTONE_TOLERANCE = 0.01  # rise in robust accuracy with eps tolerated
MIN_POINTS = 2  # and every gap above must also be at least this many points
LARGE_EPS = 1.0  # Linf: the whole [0, 1] box, so every image is reachable
LARGE_EPS_MAX_ROBUST = 0.02  # robust accuracy at LARGE_EPS above this is a warning
VANISHING_NORM = 1e-12  # an input-gradient L2 norm below this counts as vanished
VANISHING_SHARE = 0.10  # warn when more than this share of probed points has vanished gradients


@dataclass
class Warning:  # noqa: A001 - the name the diagnostics API promises; shadows the builtin here only
    code: str
    message: str
    evidence: dict
    advice: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Check:
    code: str
    ran_on: str  # what the check looked at
    result: str  # the measured numbers, in words
    status: str  # "ok", "warning" or "skipped"


@dataclass
class _Item:
    """One comparison inside a check."""

    what: str
    budget: str
    n: int
    result: str
    gap: float
    warning: Warning | None


@dataclass
class Diagnostics:
    checks: list[Check] = field(default_factory=list)
    warnings: list[Warning] = field(default_factory=list)

    def add(self, check: Check, warning: Warning | None = None) -> None:
        self.checks.append(check)
        if warning is not None:
            self.warnings.append(warning)

    def add_all(self, code: str, items: list[_Item], skipped: str) -> None:
        """One check row for many comparisons, showing the worst one's result."""
        if not items:
            self.add(Check(code, skipped, "-", "skipped"))
            return
        pairs = ", ".join(dict.fromkeys(i.what for i in items))
        budgets = ", ".join(dict.fromkeys(i.budget for i in items))
        n = ", ".join(dict.fromkeys(str(i.n) for i in items))
        worst = max(items, key=lambda i: i.gap)
        warned = [i.warning for i in items if i.warning is not None]
        status = "warning" if warned else "ok"
        self.add(Check(code, f"{pairs} at {budgets} ({n} points)", f"worst: {worst.result}", status))
        self.warnings.extend(warned)



def diagnose(
    evaluation: Evaluation,
    model: nn.Module | None = None,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    **probe_options,
) -> list[Warning]:
    """The warnings for an evaluation (and, given model and data, the two cheap probes)."""
    return run_diagnostics(evaluation, model, x, y, **probe_options).warnings


def run_diagnostics(
    evaluation: Evaluation,
    model: nn.Module | None = None,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    *,
    device: torch.device | None = None,
    probe_points: int = 64,
    probe_steps: int = 20,
    seed: int = 0,
) -> Diagnostics:
    """All checks with what each ran on, and the warnings. Probes are skipped without model/data."""
    out = Diagnostics()
    rows = [o for o in evaluation.outcomes if o.attack != WORST_CASE]
    _iterative_vs_single_step(rows, out)
    _margin_vs_ce(rows, out)
    _black_box_vs_white_box(rows, out)
    _monotone(evaluation.outcomes, out)
    if model is None or x is None or y is None:
        skipped = "needs the model and data"
        out.add(Check("large-eps-not-broken", skipped, "-", "skipped"))
        out.add(Check("vanishing-gradients", skipped, "-", "skipped"))
        return out
    dev = device if device is not None else _model_device(model)
    pick = evaluation.clean_correct.nonzero().squeeze(1)[:probe_points]
    xs, ys = x[pick].to(dev), y[pick].to(dev)
    _vanishing_gradients(model, xs, ys, out)
    _large_eps(model, xs, ys, probe_steps, seed, out)
    return out


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    if p is None:
        p = next(iter(model.buffers()), None)
    return p.device if p is not None else torch.device("cpu")


def _groups(rows: list[AttackOutcome]) -> dict[tuple[str, float], dict[str, AttackOutcome]]:
    """(norm, eps) -> {attack family name: row}; "pgd[foolbox]" belongs to the family "pgd"."""
    groups: dict[tuple[str, float], dict[str, AttackOutcome]] = {}
    for o in rows:
        groups.setdefault((o.norm, o.eps), {})[o.attack.split("[")[0]] = o
    return groups


def _traits(row: AttackOutcome) -> AttackTraits | None:
    """The row's declared traits, else those of the registered attack of its name (None if unknown)."""
    if row.traits is not None:
        return row.traits
    family = row.attack.split("[")[0]
    return attack_traits(family) if family in ATTACKS else None


def _single_step(row: AttackOutcome) -> bool:
    t = _traits(row)
    return t is not None and t.white_box and t.single_step


def _iterative_ce(row: AttackOutcome) -> bool:
    t = _traits(row)
    return t is not None and t.white_box and not t.single_step and t.loss == "ce"


def _margin(row: AttackOutcome) -> bool:
    t = _traits(row)
    return t is not None and t.white_box and t.margin_family


def _white_box(row: AttackOutcome) -> bool:
    t = _traits(row)
    return t is not None and t.white_box


def _black_box(row: AttackOutcome) -> bool:
    t = _traits(row)
    return t is not None and t.gradient_free


def _count(mask: torch.Tensor) -> int:
    return int(mask.sum())


def _budget(norm: str, eps: float) -> str:
    return f"{norm} {eps:g}"


def _big(gap_points: int, n: int, share: float) -> bool:
    return gap_points >= MIN_POINTS and gap_points > share * n


def _pairs(
    rows: list[AttackOutcome], first: Callable[[AttackOutcome], bool], second: Callable[[AttackOutcome], bool]
) -> Iterator[tuple[str, float, AttackOutcome, AttackOutcome]]:
    """(norm, eps, a, b) for every row a of the `first` role and row b of the `second` role at the
    same budget, in the order the rows came."""
    for (norm, eps), g in _groups(rows).items():
        for a in [o for o in g.values() if first(o)]:
            for b in [o for o in g.values() if second(o)]:
                yield norm, eps, a, b


def _iterative_vs_single_step(rows: list[AttackOutcome], out: Diagnostics) -> None:
    code = "iterative-weaker-than-single-step"
    items = []
    for norm, eps, s, it in _pairs(rows, _single_step, _iterative_ce):
        n = len(s.robust)
        rise = _count(it.robust) - _count(s.robust)
        only_single = _count(it.robust & s.broken)
        result = f"{s.attack} {100 * s.robust_accuracy:.1f}% vs {it.attack} {100 * it.robust_accuracy:.1f}% robust"
        warn = None
        if _big(rise, n, ITERATIVE_TOLERANCE):
            warn = Warning(
                code,
                f"{it.attack} leaves {rise} more points robust than single-step {s.attack} at "
                f"{norm} eps {eps:g} ({100 * it.robust_accuracy:.1f}% vs {100 * s.robust_accuracy:.1f}%): "
                "an iterative attack should never be weaker",
                {
                    "norm": norm,
                    "eps": eps,
                    "single_step": s.attack,
                    "iterative": it.attack,
                    "robust_accuracy_single_step": s.robust_accuracy,
                    "robust_accuracy_iterative": it.robust_accuracy,
                    "points_broken_only_by_single_step": only_single,
                    "n": n,
                },
                "Gradients are probably masked (flat or noisy loss surface). Do not trust the "
                "iterative number: run `--suite strong`, raise --restarts, and look for "
                "non-differentiable or saturating layers in the model.",
            )
        items.append(_Item(f"{s.attack} vs {it.attack}", _budget(norm, eps), n, result, rise, warn))
    out.add_all(code, items, "needs fgsm and pgd/apgd-ce at the same budget")


def _margin_vs_ce(rows: list[AttackOutcome], out: Diagnostics) -> None:
    code = "margin-stronger-than-ce"
    items = []
    for norm, eps, ce, mg in _pairs(rows, _iterative_ce, _margin):
        n = len(ce.robust)
        gap = _count(ce.robust & mg.broken)
        result = f"{mg.attack} broke {gap} points {ce.attack} left robust ({100 * gap / max(n, 1):.1f}%)"
        warn = None
        if _big(gap, n, MARGIN_GAP):
            warn = Warning(
                code,
                f"margin-loss {mg.attack} broke {gap} of {n} points ({100 * gap / n:.1f}%) that "
                f"cross-entropy {ce.attack} left robust at {norm} eps {eps:g}: the CE attack "
                "overestimates robustness",
                {
                    "norm": norm,
                    "eps": eps,
                    "ce_attack": ce.attack,
                    "margin_attack": mg.attack,
                    "robust_accuracy_ce": ce.robust_accuracy,
                    "robust_accuracy_margin": mg.robust_accuracy,
                    "margin_cumulative": mg.cumulative,
                    "points_broken_only_by_margin": gap,
                    "n": n,
                },
                "Cross-entropy gradients vanish on this model (saturated softmax: defensive "
                "distillation, scaled logits). Report the margin-loss / `--suite strong` number; "
                "a CE-only evaluation of this model is not trustworthy.",
            )
        items.append(_Item(f"{ce.attack} vs {mg.attack}", _budget(norm, eps), n, result, gap, warn))
    out.add_all(code, items, "needs pgd/apgd-ce and cw/apgd-dlr at the same budget")


def _black_box_vs_white_box(rows: list[AttackOutcome], out: Diagnostics) -> None:
    code = "black-box-stronger-than-white-box"
    items = []
    for (norm, eps), g in _groups(rows).items():
        white = [o for o in g.values() if _white_box(o)]
        black = [o for o in g.values() if _black_box(o)]
        if not white or not black:
            continue
        white_robust = torch.stack([w.robust for w in white]).all(0)
        for bb in black:
            n = len(bb.robust)
            gap = _count(white_robust & bb.broken)
            names = "+".join(w.attack for w in white)
            result = f"{bb.attack} broke {gap} points all white-box attacks left robust"
            warn = None
            if _big(gap, n, BLACK_BOX_GAP):
                warn = Warning(
                    code,
                    f"black-box {bb.attack} broke {gap} of {n} points ({100 * gap / n:.1f}%) that every "
                    f"white-box attack ({names}) left robust at {norm} eps {eps:g}",
                    {
                        "norm": norm,
                        "eps": eps,
                        "black_box": bb.attack,
                        "white_box": [w.attack for w in white],
                        "robust_accuracy_white_box": white_robust.float().mean().item(),
                        "points_broken_only_by_black_box": gap,
                        "n": n,
                    },
                    "A score-based attack that ignores gradients should not beat gradient attacks: the "
                    "gradients are misleading (masking, non-differentiable or randomised parts). Trust "
                    "only the worst case over all attacks; for non-differentiable parts use BPDA/EOT.",
                )
            items.append(_Item(f"{bb.attack} vs {names}", _budget(norm, eps), n, result, gap, warn))
    out.add_all(code, items, "needs square and a white-box attack at the same budget")


def _monotone(outcomes: list[AttackOutcome], out: Diagnostics) -> None:
    code = "not-monotone-in-eps"
    series: dict[tuple[str, str], list[AttackOutcome]] = {}
    for o in outcomes:
        series.setdefault((o.attack, o.norm), []).append(o)
    items = []
    for (attack, norm), rows in series.items():
        rows = sorted(rows, key=lambda o: o.eps)
        if len(rows) < 2:
            continue
        n = len(rows[0].robust)
        worst = max(
            ((a, b) for i, a in enumerate(rows) for b in rows[i + 1 :]),
            key=lambda ab: _count(ab[1].robust) - _count(ab[0].robust),
        )
        rise = _count(worst[1].robust) - _count(worst[0].robust)
        curve = ", ".join(f"{o.eps:g}: {100 * o.robust_accuracy:.1f}%" for o in rows)
        warn = None
        if _big(rise, n, MONOTONE_TOLERANCE):
            lo, hi = worst
            warn = Warning(
                code,
                f"{attack} ({norm}) robust accuracy rises from {100 * lo.robust_accuracy:.1f}% at eps "
                f"{lo.eps:g} to {100 * hi.robust_accuracy:.1f}% at eps {hi.eps:g}",
                {
                    "attack": attack,
                    "norm": norm,
                    "curve": {f"{o.eps:g}": o.robust_accuracy for o in rows},
                    "rise_points": rise,
                    "n": n,
                },
                "A larger budget cannot make a model more robust: the attack missed adversarials that "
                "exist (optimisation failure or masking). Raise --steps/--restarts or run `--suite strong`.",
            )
        budgets = f"{norm} eps " + "/".join(f"{o.eps:g}" for o in rows)
        items.append(_Item(attack, budgets, n, f"{attack} {curve}", rise, warn))
    out.add_all(code, items, "needs two or more budgets")


def _vanishing_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: Diagnostics) -> None:
    code = "vanishing-gradients"
    where = f"CE input gradient at {len(x)} correctly classified points"
    if len(x) == 0:
        out.add(Check(code, where, "-", "skipped"))
        return
    with eval_mode(model), torch.enable_grad():
        _, grad = input_gradient(model, x, lambda z: cross_entropy(z, y))
    norms = grad.flatten(1).norm(dim=1)
    nan = ~torch.isfinite(norms)
    zero = torch.isfinite(norms) & (norms < VANISHING_NORM)
    share = _count(nan | zero) / len(x)
    result = f"{100 * share:.1f}% vanished ({_count(zero)} ~0, {_count(nan)} NaN/inf)"
    warn = None
    if share > VANISHING_SHARE and _count(nan | zero) >= MIN_POINTS:
        finite = norms[torch.isfinite(norms)]
        warn = Warning(
            code,
            f"the cross-entropy input gradient vanished on {100 * share:.1f}% of {len(x)} probed points "
            f"({_count(zero)} with norm < {VANISHING_NORM:g}, {_count(nan)} NaN/inf)",
            {
                "points": len(x),
                "share_vanished": share,
                "zero": _count(zero),
                "nan_or_inf": _count(nan),
                "median_grad_norm": finite.median().item() if len(finite) else None,
                "threshold": VANISHING_NORM,
            },
            "Gradient attacks with the CE loss cannot move from these points. Use margin losses "
            "(cw, apgd-dlr) or `--suite strong`; NaN gradients point to numerically unstable layers.",
        )
    out.add(Check(code, where, result, "warning" if warn else "ok"), warn)


def _large_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int, out: Diagnostics) -> None:
    code = "large-eps-not-broken"
    where = f"PGD-CE, {steps} steps, no random start, linf eps {LARGE_EPS:g}, {len(x)} correctly classified points"
    if len(x) == 0:
        out.add(Check(code, where, "-", "skipped"))
        return
    # No random start: at eps = 1 a random start alone lands on noise images that most models
    # misclassify, which would hide a gradient that cannot move.
    attack = PGDLinf(steps=steps, random_start=False)
    result = attack(model, x, y, LARGE_EPS, generator=torch.Generator(device=x.device).manual_seed(seed))
    robust = 1.0 - result.success.float().mean().item()
    warn = None
    if robust > LARGE_EPS_MAX_ROBUST:
        warn = Warning(
            code,
            f"PGD-CE at linf eps {LARGE_EPS:g} (every image reachable) left {100 * robust:.1f}% of "
            f"{len(x)} probed points robust; a working attack reaches ~0%",
            {"eps": LARGE_EPS, "norm": "linf", "steps": steps, "points": len(x), "robust_accuracy": robust},
            "The gradient attack is broken on this model, so its numbers at any eps are not "
            "trustworthy: use `--suite strong` and look for masking (saturated softmax, "
            "non-differentiable preprocessing, randomness).",
        )
    out.add(Check(code, where, f"robust {100 * robust:.1f}%", "warning" if warn else "ok"), warn)
