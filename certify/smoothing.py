"""Randomized smoothing: L2 certificates for any classifier from forward passes alone.

Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial Robustness via Randomized Smoothing".
The smoothed classifier is g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I) (eq. 1). If the
top class c_A has probability at least p_A > 1/2, g is constant on the L2 ball of radius
sigma * Phi^-1(p_A) around x (Theorem 1 with p_B = 1 - p_A).

- CERTIFY (Algorithm, Section 3.2): n0 noise samples select c_A; n fresh samples give the one-sided
  Clopper-Pearson lower bound p_A at confidence 1 - alpha; the radius is sigma * Phi^-1(p_A) when
  p_A > 1/2, otherwise abstain. With probability >= 1 - alpha over the samples, a returned
  (class, radius) is correct for g.
- PREDICT: two-sided binomial test of the top two counts against p = 1/2; abstain when the p-value
  exceeds alpha. With probability >= 1 - alpha a returned class is g(x).

Design: the certificate is a statement about g, not about the base model f, so nothing here
mixes f's accuracy into g's. Noise is added in the model's input space ([0, 1] pixels); a model
that normalises its inputs does so inside its forward, after the noise, as the paper's models do.
Samples of all points form one flat stream cut into batches of `batch_size` rows, so small n
still fills batches and memory stays bounded by one batch whatever n is; counting is a bincount
on the model's device. Randomness comes only from the caller's `torch.Generator` on that device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.stats import beta, binom, norm
from torch import nn

from robustcli.attacks.base import eval_mode
from robustcli.core.errors import InputError

ABSTAIN = -1


@dataclass(frozen=True)
class SmoothingCertificate:
    """CERTIFY's answer per point (all tensors on the CPU, first dimension = points)."""

    prediction: torch.Tensor  # int64; the selected class c_A, or ABSTAIN
    radius: torch.Tensor  # float64 certified L2 radius; 0 where abstained
    p_lower: torch.Tensor  # float64 lower confidence bound on P(f(x + e) = c_A)
    selection_counts: torch.Tensor  # int64 (points, classes): the n0 selection samples
    counts: torch.Tensor  # int64 (points, classes): the n estimation samples
    sigma: float
    alpha: float

    @property
    def abstained(self) -> torch.Tensor:
        return self.prediction == ABSTAIN


PER_POINT_FIELDS = ("prediction", "radius", "p_lower", "selection_counts", "counts")


@dataclass(frozen=True)
class SmoothedPrediction:
    """PREDICT's answer per point."""

    prediction: torch.Tensor  # int64; the top class, or ABSTAIN when the test is not significant
    p_value: torch.Tensor  # float64 two-sided binomial test of top vs runner-up counts
    counts: torch.Tensor  # int64 (points, classes)

    @property
    def abstained(self) -> torch.Tensor:
        return self.prediction == ABSTAIN


def check_smoothing_parameters(sigma: float, n0: int, n: int, alpha: float) -> None:
    """Raise a one-line InputError for parameters the method is not defined for."""
    if not sigma > 0 or not np.isfinite(sigma):
        raise InputError(f"--sigma must be > 0 (the noise standard deviation in [0, 1] pixel units), got {sigma:g}")
    if not 0 < alpha < 1:
        raise InputError(f"--alpha must be strictly between 0 and 1 (e.g. 0.001), got {alpha:g}")
    if n0 < 1 or n < 1:
        raise InputError(f"--n0 and --samples must be >= 1, got n0={n0} and samples={n}")
    if n0 > n:
        raise InputError(f"--n0 ({n0}) must not exceed --samples ({n}): selection needs fewer samples than estimation")


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def noise_counts(
    model: nn.Module,
    x: torch.Tensor,
    sigma: float,
    num: int,
    num_classes: int,
    *,
    generator: torch.Generator,
    batch_size: int = 1024,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Counts (points, classes) of argmax f(x_i + e) over `num` Gaussian draws per point.

    The N * num noisy inputs are one stream processed `batch_size` rows at a time on the
    generator's device; `on_batch(rows)` reports progress in noisy samples.
    """
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    device = generator.device
    points = len(x)
    total = points * num
    # inference_mode: counts only, so no autograd bookkeeping (a little faster than no_grad).
    with eval_mode(model), torch.inference_mode():
        counts = torch.zeros(points * num_classes, dtype=torch.int64, device=device)
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            owner = torch.arange(start, stop, device=device) // num  # which point each row belongs to
            first, last = start // num, (stop - 1) // num
            xb = x[first : last + 1].to(device)[owner - first]
            noisy = torch.randn(xb.shape, generator=generator, device=device, dtype=xb.dtype)
            pred = model(noisy.mul_(sigma).add_(xb)).argmax(1)  # in place: one batch-sized buffer
            counts += torch.bincount(owner * num_classes + pred, minlength=points * num_classes)
            if on_batch is not None:
                on_batch(stop - start)
    return counts.view(points, num_classes).cpu().clone()  # clone: an ordinary tensor, not an inference one


def clopper_pearson_lower(successes: torch.Tensor, trials: int, alpha: float) -> torch.Tensor:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion (float64).

    The alpha quantile of Beta(k, n - k + 1); 0 when k = 0 (Clopper & Pearson 1934).
    """
    k = successes.double().numpy()
    with np.errstate(invalid="ignore"):
        lower = beta.ppf(alpha, k, trials - k + 1)
    return torch.from_numpy(np.where(k > 0, lower, 0.0))


def certify_smoothed(
    model: nn.Module,
    x: torch.Tensor,
    sigma: float,
    *,
    n: int,
    alpha: float,
    num_classes: int,
    generator: torch.Generator,
    n0: int = 100,
    batch_size: int = 1024,
    on_batch: Callable[[int], None] | None = None,
) -> SmoothingCertificate:
    """CERTIFY (Cohen et al. 2019, Section 3.2) for every point of `x` ([0, 1] inputs)."""
    check_smoothing_parameters(sigma, n0, n, alpha)
    common = dict(generator=generator, batch_size=batch_size, on_batch=on_batch)
    selection = noise_counts(model, x, sigma, n0, num_classes, **common)
    top = selection.argmax(1)
    counts = noise_counts(model, x, sigma, n, num_classes, **common)
    p_lower = clopper_pearson_lower(counts.gather(1, top[:, None]).squeeze(1), n, alpha)
    certified = p_lower > 0.5
    radius = torch.where(certified, sigma * torch.from_numpy(norm.ppf(p_lower.numpy())), torch.zeros_like(p_lower))
    prediction = torch.where(certified, top, torch.full_like(top, ABSTAIN))
    return SmoothingCertificate(prediction, radius, p_lower, selection, counts, float(sigma), float(alpha))


def predict_from_counts(counts: torch.Tensor, alpha: float) -> SmoothedPrediction:
    """PREDICT's decision from class counts: top class if the binomial test of the top two counts
    rejects p = 1/2 at level alpha, else abstain.

    With p = 1/2 the binomial is symmetric, so the exact two-sided p-value is
    min(1, 2 * P(Bin(nA + nB, 1/2) <= min(nA, nB))), as scipy's binomtest computes it.
    """
    two = counts.topk(2, dim=1) if counts.shape[1] > 1 else None
    if two is None:
        raise InputError("smoothing needs a classifier with at least two classes")
    n_a, n_b = two.values[:, 0].double().numpy(), two.values[:, 1].double().numpy()
    p_value = np.minimum(1.0, 2 * binom.cdf(np.minimum(n_a, n_b), n_a + n_b, 0.5))
    p_value = torch.from_numpy(p_value)
    top = two.indices[:, 0]
    prediction = torch.where(p_value <= alpha, top, torch.full_like(top, ABSTAIN))
    return SmoothedPrediction(prediction, p_value, counts)


def predict_smoothed(
    model: nn.Module,
    x: torch.Tensor,
    sigma: float,
    *,
    n: int,
    alpha: float,
    num_classes: int,
    generator: torch.Generator,
    batch_size: int = 1024,
    on_batch: Callable[[int], None] | None = None,
) -> SmoothedPrediction:
    """PREDICT (Cohen et al. 2019, Section 3.1) with `n` fresh noise samples per point."""
    check_smoothing_parameters(sigma, 1, n, alpha)
    counts = noise_counts(
        model, x, sigma, n, num_classes, generator=generator, batch_size=batch_size, on_batch=on_batch
    )
    return predict_from_counts(counts, alpha)


def merge_certificates(parts: list[SmoothingCertificate]) -> SmoothingCertificate:
    """The certificates of consecutive blocks of points as one (per-point fields concatenated)."""
    if not parts:
        raise ValueError("merge_certificates needs at least one certificate (an empty one for no points)")
    first = parts[0]
    return SmoothingCertificate(
        *(torch.cat([getattr(p, f) for p in parts]) for f in PER_POINT_FIELDS), first.sigma, first.alpha
    )


def empty_certificate(num_classes: int, sigma: float, alpha: float) -> SmoothingCertificate:
    """A certificate for zero points (a rank whose shard is empty)."""
    none = torch.zeros(0, dtype=torch.int64)
    counts = torch.zeros(0, num_classes, dtype=torch.int64)
    zero = torch.zeros(0, dtype=torch.float64)
    return SmoothingCertificate(none, zero, zero.clone(), counts, counts.clone(), float(sigma), float(alpha))


def certified_accuracy(certificate: SmoothingCertificate, labels: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """Share of points whose certified class is the label with radius >= r, for each r in `radii`.

    At r = 0 this is CERTIFY's clean accuracy of g (abstentions count as wrong), as in Cohen et
    al.'s figures; it is never the base model's accuracy.
    """
    correct = certificate.prediction == labels.cpu()
    ok = correct[None, :] & (certificate.radius[None, :] >= radii.double()[:, None])
    return ok.double().mean(1)
