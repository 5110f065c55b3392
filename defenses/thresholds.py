"""Conservative thresholds for a classifier used as a high-stakes filter (Ziegler et al. 2022).

The filter blocks an input when its unsafe probability p_u(x) = sum_{c in unsafe} softmax(f(x))_c
reaches the threshold t (block iff p_u >= t). A false negative is an unsafe input let through
(p_u < t). In high-stakes use t is set low enough that almost no unsafe input passes, even when an
attacker perturbs it, paying with blocked safe inputs.

Threshold choice on a calibration split: with n unsafe inputs and k of them let through, the
one-sided Clopper-Pearson upper 95% bound on the false-negative rate (FNR) is
Beta.ppf(0.95, k + 1, n - k). Let k* be the largest k whose bound is <= the target; the chosen
threshold is the highest t with at most k* unsafe inputs below it, clean and attacked alike. If
even k = 0 gives a bound above the target (n < log(0.05) / log(1 - target)), no threshold can be
certified and we say so. Validity: the FNR bound is monotone in t, so taking the highest t that
passes is a fixed-sequence test from the conservative end (Bates et al. 2021, "Distribution-free,
risk-controlling prediction sets"; Angelopoulos et al. 2021, "Learn then Test"), which keeps the
95% level without a multiplicity correction, for new data from the calibration distribution.

The attacked FNR is against one attack (Linf PGD minimising log p_u, best iterate kept, the clean
point included), so it is a lower bound on the FNR under every attack in the ball.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.stats import beta as beta_dist
from torch import nn

from robustcli.attacks.evaluate import batch_generator
from robustcli.defenses.inner_max import pgd_maximize
from robustcli.core.errors import InputError
from robustcli.core.nn import eval_mode


class CalibrationTooSmall(InputError):
    """The calibration split cannot certify the target FNR with any threshold."""


def clopper_pearson_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound on a rate from k events in n trials."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    return float(beta_dist.ppf(confidence, k + 1, n - k))


def clopper_pearson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided (central) Clopper-Pearson interval."""
    if n <= 0:
        return (0.0, 1.0)
    a = (1 - confidence) / 2
    lo = 0.0 if k == 0 else float(beta_dist.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta_dist.ppf(1 - a, k + 1, n - k))
    return lo, hi


def allowed_misses(n: int, target: float, confidence: float = 0.95) -> int:
    """The largest k with clopper_pearson_upper(k, n) <= target; -1 when even k = 0 fails."""
    k = -1
    while k + 1 < n and clopper_pearson_upper(k + 1, n, confidence) <= target:
        k += 1
    return k


def min_calibration_size(target: float, confidence: float = 0.95) -> int:
    """The fewest unsafe calibration inputs for which 0 misses certifies the target."""
    return math.ceil(math.log(1 - confidence) / math.log1p(-target))


def unsafe_log_probability(logits: torch.Tensor, unsafe: torch.Tensor) -> torch.Tensor:
    """log p_u = logsumexp of the unsafe logits - logsumexp of all logits, per point (N,)."""
    return torch.logsumexp(logits[:, unsafe], 1) - torch.logsumexp(logits, 1)


@torch.no_grad()
def unsafe_probability(model: nn.Module, x: torch.Tensor, unsafe: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """p_u(x) in eval mode, (N,), on the model's device."""
    device = next(model.parameters()).device
    u = unsafe.to(device)
    with eval_mode(model):
        out = torch.cat([unsafe_log_probability(model(x[i : i + batch_size].to(device)), u).exp() for i in range(0, len(x), batch_size)])
    return out


def attacked_unsafe_probability(
    model: nn.Module,
    x: torch.Tensor,
    unsafe: torch.Tensor,
    eps: float,
    *,
    steps: int = 40,
    restarts: int = 1,
    batch_size: int = 256,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """The lowest p_u found in the Linf eps ball around each x (the clean point included).

    Linf PGD ascending -log p_u (log keeps the gradient alive where p_u saturates near 1), every
    point every step, best iterate per point; with restarts the minimum over restarts.
    """
    device = next(model.parameters()).device
    u = unsafe.to(device)
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        gen = batch_generator(seed, start, device)
        best = unsafe_probability(model, xb, unsafe)
        for _ in range(restarts):
            xa = pgd_maximize(
                lambda z: -unsafe_log_probability(model(z), u), xb, eps, steps=steps, generator=gen,
                model=model, keep_best=True,
            )  # fmt: skip
            best = torch.minimum(best, unsafe_probability(model, xa, unsafe))
        out.append(best)
        if on_batch is not None:
            on_batch(len(xb))
    return torch.cat(out)


def check_calibration_size(n: int, target_fnr: float, confidence: float = 0.95) -> int:
    """`allowed_misses(n, ...)`, or CalibrationTooSmall when no threshold can certify the target."""
    if not 0 < target_fnr < 1:
        raise InputError(f"--target-fnr must lie in (0, 1), got {target_fnr}")
    if n == 0:
        raise CalibrationTooSmall("the calibration split has no unsafe inputs; check --unsafe-class and the data")
    k = allowed_misses(n, target_fnr, confidence)
    if k < 0:
        need = min_calibration_size(target_fnr, confidence)
        best = clopper_pearson_upper(0, n, confidence)
        raise CalibrationTooSmall(
            f"the calibration split has {n} unsafe inputs; even with none let through, the "
            f"{100 * confidence:g}% upper bound on the FNR is {best:.4g} > target {target_fnr:g}, so no threshold "
            f"can certify it; use at least {need} unsafe calibration inputs or a target >= {best:.4g}"
        )
    return k


@dataclass
class ThresholdChoice:
    threshold: float
    target_fnr: float
    confidence: float
    n_unsafe: int
    allowed_misses: int
    misses_clean: int
    misses_attacked: int
    fnr_upper_clean: float
    fnr_upper_attacked: float


def choose_threshold(
    p_clean: torch.Tensor, p_attacked: torch.Tensor, target_fnr: float, confidence: float = 0.95
) -> ThresholdChoice:
    """The highest threshold whose FNR upper bound is <= target on clean and attacked unsafe inputs.

    `p_clean`, `p_attacked`: unsafe probabilities of the calibration split's unsafe inputs.
    """
    n = len(p_clean)
    k = check_calibration_size(n, target_fnr, confidence)
    clean = torch.sort(p_clean.double().cpu()).values
    attacked = torch.sort(p_attacked.double().cpu()).values
    # Block iff p >= t: the (k+1)-th smallest value lets exactly the k below it through (ties fewer).
    t = float(min(clean[k], attacked[k]))
    misses_clean = int((p_clean.double().cpu() < t).sum())
    misses_attacked = int((p_attacked.double().cpu() < t).sum())
    return ThresholdChoice(
        t, target_fnr, confidence, n, k, misses_clean, misses_attacked,
        clopper_pearson_upper(misses_clean, n, confidence), clopper_pearson_upper(misses_attacked, n, confidence),
    )  # fmt: skip


@dataclass
class Rate:
    events: int
    n: int
    rate: float
    ci: tuple[float, float]

    @classmethod
    def of(cls, mask: torch.Tensor, confidence: float = 0.95) -> "Rate":
        k, n = int(mask.sum()), int(mask.numel())
        return cls(k, n, k / n if n else math.nan, clopper_pearson_interval(k, n, confidence))


@dataclass
class FilterRates:
    threshold: float
    fnr_clean: Rate  # unsafe inputs let through
    fnr_attacked: Rate  # unsafe inputs let through after the attack
    safe_blocked: Rate  # safe inputs blocked: the quality cost


def filter_rates(
    threshold: float, p_unsafe: torch.Tensor, p_unsafe_attacked: torch.Tensor, p_safe: torch.Tensor
) -> FilterRates:
    return FilterRates(
        threshold,
        Rate.of(p_unsafe.cpu() < threshold),
        Rate.of(p_unsafe_attacked.cpu() < threshold),
        Rate.of(p_safe.cpu() >= threshold),
    )


def rate_curves(
    p_unsafe: torch.Tensor, p_unsafe_attacked: torch.Tensor, p_safe: torch.Tensor, points: int = 200
) -> dict[str, np.ndarray]:
    """FNR (clean, attacked) and safe-block rate over log-spaced thresholds from 1e-8 to 1."""
    t = np.logspace(-8, 0, points)
    rate = lambda p, below: (  # noqa: E731
        (p.cpu().double().numpy()[None, :] < t[:, None]).mean(1) if below else (p.cpu().double().numpy()[None, :] >= t[:, None]).mean(1)
    )
    return {
        "threshold": t,
        "fnr_clean": rate(p_unsafe, True),
        "fnr_attacked": rate(p_unsafe_attacked, True),
        "safe_blocked": rate(p_safe, False),
    }
