"""Power-law scaling of adversarial error with eps (Cubuk et al. 2017, "Intriguing Properties of
Adversarial Examples", sections 3-4).

For each attack, adversarial error is measured on a log-spaced eps grid with the foundation's
evaluation engine (`attacks.evaluate.evaluate`, worst case per point, plus a worst-case curve
over attacks of the same norm). Error here is conditional on clean correctness: broken points /
correctly classified points (the attack's success rate), so err(0) = 0 and clean errors do not
add a constant floor that would bend the log-log line. The small-eps regime and the fit are in
`analyses.powerlaw`; the first-order prediction from logit gaps in `analyses.logit_gap`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from robustcli.analyses.logit_gap import LogitGaps, logit_gaps
from robustcli.analyses.powerlaw import (
    DEFAULT_MAX_ERROR,
    DEFAULT_MIN_BROKEN,
    PowerLawFit,
    bootstrap_gamma,
    fit_power_law,
    select_regime,
)
from robustcli.attacks.base import Attack
from robustcli.attacks.evaluate import evaluate

DEFAULT_RANGE = {"linf": (1e-3, 0.3), "l2": (1e-2, 3.0)}


def log_grid(lo: float, hi: float, points: int) -> np.ndarray:
    """`points` eps values evenly spaced in log between lo and hi (both > 0)."""
    if not 0 < lo < hi:
        raise ValueError(f"an eps grid needs 0 < min < max, got {lo} and {hi}")
    if points < 2:
        raise ValueError(f"an eps grid needs at least 2 points, got {points}")
    return np.geomspace(lo, hi, points)


@dataclass
class ErrorCurve:
    attack: str
    norm: str
    eps: np.ndarray  # (G,)
    err: np.ndarray  # (G,) broken / attacked
    broken: np.ndarray  # (G,) counts
    attacked: int
    regime: np.ndarray  # bool (G,) points used in the fit
    first_order: np.ndarray  # (G,) predicted error from normalised logit gaps
    fit: PowerLawFit | None
    fit_problem: str | None  # why there is no fit
    bootstrap_ci: tuple[float, float] = (float("nan"), float("nan"))

    def summary(self) -> dict:
        return {
            "attack": self.attack,
            "norm": self.norm,
            "attacked": self.attacked,
            "eps": self.eps.tolist(),
            "error": self.err.tolist(),
            "broken": self.broken.tolist(),
            "in_fit": self.regime.tolist(),
            "first_order_error": self.first_order.tolist(),
            "fit": None if self.fit is None else self.fit.summary() | {"bootstrap_ci": list(self.bootstrap_ci)},
            "fit_problem": self.fit_problem,
        }


@dataclass
class ScalingResult:
    clean_accuracy: float
    curves: list[ErrorCurve]
    gaps: LogitGaps  # on the device of evaluate()'s results
    max_error: float
    min_broken: int
    extra: dict = field(default_factory=dict)

    def gap_summary(self) -> dict:
        """Quantiles of the logit gap, of the normalised gap per norm, and mean gap per rank."""
        qs = [0.1, 0.25, 0.5, 0.75, 0.9]

        def quantiles(t: torch.Tensor) -> dict:
            t = t[torch.isfinite(t)].double()
            return {f"q{int(q * 100)}": (t.quantile(q).item() if len(t) else None) for q in qs}

        return {
            "points": int(len(self.gaps.gap)),
            "gap": quantiles(self.gaps.gap),
            "mean_gap_to_rank": self.gaps.sorted_gaps.double().mean(0).tolist() if len(self.gaps.gap) else [],
            "normalised_gap": {n: quantiles(self.gaps.normalised(n)) for n in self.gaps.grad_norm},
        }


def fit_curve(
    attack: str,
    norm: str,
    eps: np.ndarray,
    broken_matrix: np.ndarray,
    first_order: np.ndarray,
    *,
    max_error: float,
    min_broken: int,
    level: float,
    resamples: int,
    seed: int,
) -> ErrorCurve:
    """Error curve from a (points x eps) broken matrix over the attacked points, with its fit."""
    attacked = broken_matrix.shape[0]
    broken = broken_matrix.sum(0)
    err = broken / attacked if attacked else np.full(len(eps), np.nan)
    regime = select_regime(err, broken, max_error=max_error, min_broken=min_broken)
    fit, problem, boot = None, None, (float("nan"), float("nan"))
    if regime.sum() < 3:
        problem = (
            f"{int(regime.sum())} grid points have >= {min_broken} broken points and error <= {max_error:g}; "
            "a fit with a confidence interval needs 3: widen the eps range, add --points or raise --n"
        )
    else:
        fit = fit_power_law(eps[regime], err[regime], level=level)
        boot = bootstrap_gamma(broken_matrix, eps, regime, resamples=resamples, level=level, seed=seed)
    return ErrorCurve(attack, norm, eps, err, broken, attacked, regime, first_order, fit, problem, boot)


def scaling_analysis(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[Attack],
    *,
    grids: dict[str, np.ndarray],
    device: torch.device,
    batch_size: int = 256,
    seed: int = 0,
    max_error: float = DEFAULT_MAX_ERROR,
    min_broken: int = DEFAULT_MIN_BROKEN,
    level: float = 0.95,
    resamples: int = 1000,
    on_batch: Callable[[int], None] | None = None,
) -> ScalingResult:
    """Error-vs-eps curves for each attack (and their worst case per norm), fits and gap statistics.

    `grids` maps a norm ("linf", "l2") to the eps grid for attacks in that norm. `on_batch(n)`
    reports progress in points (attack batches, then the gradient pass).
    """
    plan = [(a, [float(e) for e in grids[a.norm]]) for a in attacks]
    result = evaluate(model, x, y, plan, device=device, batch_size=batch_size, seed=seed, on_batch=on_batch)
    correct = result.clean_correct
    norms = tuple(dict.fromkeys(a.norm for a in attacks))
    gaps = logit_gaps(model, x, y, norms, device=device, batch_size=batch_size, on_batch=on_batch)
    home = correct.device  # where evaluate() keeps its per-point results
    gaps = LogitGaps(
        gaps.correct.to(home), gaps.gap.to(home), gaps.sorted_gaps.to(home), {k: v.to(home) for k, v in gaps.grad_norm.items()}
    )
    by_curve: dict[tuple[str, str], list] = {}
    for o in result.outcomes:
        by_curve.setdefault((o.attack, o.norm), []).append(o)
    curves = []
    for (name, norm), outcomes in by_curve.items():
        outcomes.sort(key=lambda o: o.eps)
        eps = np.array([o.eps for o in outcomes])
        broken = torch.stack([o.broken[correct] for o in outcomes], 1).numpy()
        predicted = gaps.first_order_error(norm, torch.from_numpy(eps)).numpy()
        curves.append(
            fit_curve(
                name, norm, eps, broken, predicted,
                max_error=max_error, min_broken=min_broken, level=level, resamples=resamples, seed=seed,
            )  # fmt: skip
        )
    return ScalingResult(result.clean_accuracy, curves, gaps, max_error, min_broken)
