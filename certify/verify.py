"""Certified evaluation: per eps and method, which points are verified, and a PGD cross-check.

For each eps, every point gets: clean correctness, the margin lower bounds of each method (the
point is verified iff all K - 1 margin lower bounds are > 0), and PGD robustness on the same
points (an upper bound on robust accuracy). Point by point, verified <= PGD-robust <= correct must
hold; a point that is verified but misclassified, or verified and broken by PGD, means a bound
is unsound, and `SoundnessError` is raised with the point, eps and method. That is an internal
error (a bug), never a user error.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch
from torch import nn

from robustcli.attacks.base import eval_mode
from robustcli.attacks.evaluate import batch_generator
from robustcli.attacks.pgd import PGDL2, PGDLinf
from robustcli.certify.bounders import METHODS as BOUND_METHODS
from robustcli.certify.bounders import Bounder, InputSet, build_bounder
from robustcli.certify.spec import margin_spec
from robustcli.core.nn import model_float_dtype

METHODS = tuple(BOUND_METHODS)


class SoundnessError(AssertionError):
    """A certified point was broken: a bound engine is unsound. Always a bug, never bad input."""


@dataclass
class CertifyOutcome:
    method: str
    norm: str
    eps: float
    correct: torch.Tensor  # bool (N,)
    verified: torch.Tensor  # bool (N,)
    pgd_robust: torch.Tensor  # bool (N,): correct and not broken by PGD
    margin_lower: torch.Tensor  # float (N,): min over margin rows of the certified lower bound
    time_s: float  # bounding only

    PER_POINT = ("correct", "verified", "pgd_robust", "margin_lower")

    @property
    def clean_accuracy(self) -> float:
        return _mean(self.correct)

    @property
    def verified_accuracy(self) -> float:
        return _mean(self.verified)

    @property
    def pgd_accuracy(self) -> float:
        return _mean(self.pgd_robust)

    @property
    def gap(self) -> float:
        """PGD robust accuracy minus verified accuracy: what neither side could settle."""
        return self.pgd_accuracy - self.verified_accuracy

    @property
    def mean_margin_lower(self) -> float:
        return self.margin_lower.mean().item() if len(self.margin_lower) else math.nan

    def summary(self) -> dict:
        return {
            "method": self.method,
            "norm": self.norm,
            "eps": self.eps,
            "clean_accuracy": self.clean_accuracy,
            "verified_accuracy": self.verified_accuracy,
            "pgd_accuracy": self.pgd_accuracy,
            "gap": self.gap,
            "mean_margin_lower_bound": self.mean_margin_lower,
            "time_s": self.time_s,
            "points_per_s": len(self.correct) / self.time_s if self.time_s > 0 else None,
        }


@dataclass
class CertifyEvaluation:
    clean_accuracy: float
    outcomes: list[CertifyOutcome] = field(default_factory=list)
    pgd_time_s: float = 0.0


def _mean(t: torch.Tensor) -> float:
    return t.float().mean().item() if len(t) else math.nan


def check_soundness(outcome: CertifyOutcome, offset: int = 0) -> None:
    """Raise SoundnessError unless verified <= PGD-robust <= correct holds point by point."""
    bad_clean = outcome.verified & ~outcome.correct
    bad_pgd = outcome.verified & ~outcome.pgd_robust
    for bad, what in ((bad_clean, "misclassified"), (bad_pgd, "broken by PGD")):
        if bad.any():
            i = int(bad.nonzero()[0])
            raise SoundnessError(
                f"unsound bound: point {offset + i} is verified by {outcome.method} at {outcome.norm} "
                f"eps={outcome.eps:g} (margin lower bound {outcome.margin_lower[i].item():.6g}) but is {what}; "
                "this is a bug in the bound engine, please report it"
            )
    if (outcome.pgd_robust & ~outcome.correct).any():
        raise SoundnessError("a misclassified point was counted PGD-robust; this is a bug in the evaluation")


def certify_dataset(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps_list: Sequence[float],
    methods: Sequence[str],
    norm: str = "linf",
    *,
    num_classes: int,
    batch_size: int = 256,
    seed: int = 0,
    pgd_steps: int = 40,
    pgd_restarts: int = 1,
    alpha_iterations: int = 20,
    device: torch.device | None = None,
    on_batch: Callable[[int], None] | None = None,
    offset: int = 0,
    bounders: dict[str, Bounder] | None = None,
) -> CertifyEvaluation:
    """Certify every point for every (eps, method) and cross-check against PGD on the same points.

    The model runs in eval mode. `bounders`: already built bounders by method name (the rest are
    built here from the registry). `on_batch(n)` is called with n = points finished per (eps, method
    or PGD) step, so a progress bar's total is len(x) * len(eps_list) * (len(methods) + 1).
    PGD's random starts come from the seed and each batch's first index in the full data set
    (`offset` + position, `attacks.evaluate.batch_generator`), so a shard of whole batches
    (`offset` a multiple of `batch_size`) reproduces the full run's points; see `merge_shards`.

    A float64 model (a float64 ONNX file kept in its precision) takes x in float64: clean accuracy,
    PGD and every bound then run in the model's own arithmetic, so a certificate and a PGD break are
    both about the model's weights. A float32 x is refused rather than mixed in (cast it with
    `x.double()`: exact).
    """
    if model_float_dtype(model) == torch.float64 and x.dtype != torch.float64:
        raise ValueError(f"the model computes in float64 but x is {x.dtype}; pass x.double() (exact for float32 data)")
    if offset % batch_size:
        raise ValueError(f"offset {offset} must be a multiple of batch_size {batch_size}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; expected some of {METHODS}")
    device = device or next(model.parameters()).device
    attack = (PGDLinf if norm == "linf" else PGDL2)(steps=pgd_steps, restarts=pgd_restarts)
    n = len(x)
    with eval_mode(model):
        bounders = dict(bounders or {})
        for m in methods:
            if n and m not in bounders:  # an empty shard of a sharded run has nothing to bound
                bounders[m] = build_bounder(m, model, x[:2].to(device), alpha_iterations=alpha_iterations, norm=norm)
        correct = torch.zeros(n, dtype=torch.bool, device=device)
        with torch.no_grad():
            for s in range(0, n, batch_size):
                correct[s : s + batch_size] = model(x[s : s + batch_size].to(device)).argmax(1) == y[s : s + batch_size].to(device)
        result = CertifyEvaluation(_mean(correct))
        for eps in eps_list:
            robust = correct.clone()
            t0 = time.perf_counter()
            for s in range(0, n, batch_size):
                idx = torch.arange(s, min(s + batch_size, n), device=device)
                todo = idx[correct[idx]]
                if len(todo) and eps > 0:
                    g = batch_generator(seed, offset + s, device)
                    adv = attack(model, x[todo.cpu()].to(device), y[todo.cpu()].to(device), eps, generator=g)
                    robust[todo[adv.success_at(eps)]] = False
                if on_batch:
                    on_batch(len(idx))
            result.pgd_time_s += time.perf_counter() - t0
            for method in methods:
                verified = torch.zeros(n, dtype=torch.bool, device=device)
                lower_min = torch.zeros(n, device=device)
                elapsed = 0.0
                for s in range(0, n, batch_size):
                    xb, yb = x[s : s + batch_size].to(device), y[s : s + batch_size].to(device)
                    spec = margin_spec(yb, num_classes, xb.dtype)
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        lower = bounders[method].lower(InputSet.ball(xb, eps, norm), spec)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    elapsed += time.perf_counter() - t0
                    verified[s : s + len(xb)] = (lower > 0).all(1)
                    lower_min[s : s + len(xb)] = lower.min(1).values
                    if on_batch:
                        on_batch(len(xb))
                outcome = CertifyOutcome(method, norm, float(eps), correct, verified, robust, lower_min, elapsed)
                check_soundness(outcome, offset)
                result.outcomes.append(outcome)
    return result


def merge_shards(shards: Sequence[CertifyEvaluation]) -> CertifyEvaluation:
    """One evaluation from evaluations of consecutive shards of a data set (same eps and methods).

    Per-point tensors are concatenated (on the CPU); times are the slowest shard's, as shards run
    side by side.
    """
    if len(shards) == 1:
        return shards[0]
    outcomes = []
    for rows in zip(*(s.outcomes for s in shards), strict=True):
        outcomes.append(
            replace(
                rows[0],
                **{f: torch.cat([getattr(o, f).cpu() for o in rows]) for f in CertifyOutcome.PER_POINT},
                time_s=max(o.time_s for o in rows),
            )
        )
    if not outcomes:
        raise ValueError("certify shards without outcomes cannot be merged")
    return CertifyEvaluation(_mean(outcomes[0].correct), outcomes, max(s.pgd_time_s for s in shards))
