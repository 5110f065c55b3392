"""Randomized smoothing (Cohen et al. 2019): soundness against closed-form probabilities, PREDICT's
test, batching, and a PGD-L2 sanity check on the smoothed classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import beta, binom, binomtest, norm
from torch import nn

from robustcli.attacks.pgd import PGDL2
from robustcli.certify.smoothing import (
    ABSTAIN,
    certified_accuracy,
    certify_smoothed,
    clopper_pearson_lower,
    noise_counts,
    predict_from_counts,
    predict_smoothed,
)
from robustcli.core.errors import InputError


class HalfSpace(nn.Module):
    """f(x) = 1 if w.x + b > 0 else 0, as two logits [0, w.x + b].

    Under e ~ N(0, sigma^2 I), P(f(x + e) = 1) = Phi((w.x + b) / (sigma |w|)): the smoothed
    classifier equals f and its exact certified radius is the distance |w.x + b| / |w| to the plane.
    """

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.linear = nn.Linear(len(w), 1)
        with torch.no_grad():
            self.linear.weight.copy_(w[None])
            self.linear.bias.fill_(b)
        self.max_rows = 0

    def forward(self, x):
        self.max_rows = max(self.max_rows, len(x))
        z = self.linear(x.flatten(1))
        return torch.cat([torch.zeros_like(z), z], 1)


def half_space(distance: float, dim: int = 5) -> tuple[HalfSpace, torch.Tensor]:
    """A half-space model and a point at signed distance `distance` from its boundary (class 1)."""
    w = torch.linspace(0.5, 1.5, dim)
    x = torch.full((dim,), 0.5)
    b = distance * w.norm().item() - float(w @ x)
    return HalfSpace(w, b), x


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def exact_overclaim_rate(p_true: float, n: int, alpha: float) -> float:
    """P over k ~ Bin(n, p_true) that the Clopper-Pearson lower bound exceeds p_true (exact sum)."""
    k = np.arange(1, n + 1)
    over = beta.ppf(alpha, k, n - k + 1) > p_true
    return float(binom.pmf(k[over], n, p_true).sum())


def test_certified_radius_overclaims_at_most_alpha_of_trials():
    """1000 seeded trials at a point whose true radius is known: the share of trials whose radius
    exceeds it (or certifies the wrong class) is at most alpha and matches the exact binomial
    probability of the Clopper-Pearson bound overshooting; a point-estimate radius fails often."""
    sigma, true_radius, n, n0, alpha, trials = 0.5, 0.5, 200, 20, 0.1, 1000
    model, x = half_space(true_radius)
    p_true = norm.cdf(true_radius / sigma)
    cert = certify_smoothed(model, x.expand(trials, -1), sigma, n=n, n0=n0, alpha=alpha, num_classes=2,
                            generator=gen(0), batch_size=4096)  # fmt: skip
    certified = cert.prediction != ABSTAIN
    wrong = certified & ((cert.prediction != 1) | (cert.radius > true_radius + 1e-9))
    expected = exact_overclaim_rate(p_true, n, alpha)
    assert expected <= alpha  # the theorem, on the exact distribution
    lo, hi = binom.ppf(1e-6, trials, expected), binom.ppf(1 - 1e-6, trials, expected)
    assert lo <= int(wrong.sum()) <= hi, (int(wrong.sum()), expected)
    assert int(wrong.sum()) <= binom.ppf(1 - 1e-6, trials, alpha)
    # Power: the naive radius from the point estimate overclaims in about half of the trials.
    p_hat = cert.counts[:, 1].double() / n
    naive = sigma * torch.from_numpy(norm.ppf(p_hat.clamp(max=1 - 1e-12).numpy()))
    assert int((naive > true_radius).sum()) > binom.ppf(1 - 1e-6, trials, alpha)


def test_certified_radius_approaches_true_radius_as_n_grows():
    sigma, true_radius, alpha, trials = 0.25, 0.3, 0.001, 40
    model, x = half_space(true_radius)
    gaps = []
    for i, n in enumerate((100, 1000, 10000)):
        cert = certify_smoothed(model, x.expand(trials, -1), sigma, n=n, alpha=alpha, num_classes=2,
                                generator=gen(i), batch_size=8192)  # fmt: skip
        assert bool((cert.prediction == 1).all())
        # Each trial overclaims with probability <= alpha; a few in 40 are chance, many are a bug.
        assert int((cert.radius > true_radius).sum()) <= binom.ppf(1 - 1e-6, trials, alpha)
        gaps.append(true_radius - cert.radius.mean().item())
    assert gaps[0] > gaps[1] > gaps[2] > 0
    assert gaps[2] < 0.1 * true_radius, gaps


def test_point_on_the_boundary_abstains():
    model, x = half_space(0.0)
    cert = certify_smoothed(model, x.expand(50, -1), 0.5, n=500, alpha=0.01, num_classes=2, generator=gen(1))
    assert float(cert.abstained.double().mean()) >= 0.9  # true p_A = 1/2: certifying would be wrong
    assert bool((cert.radius[cert.abstained] == 0).all())


def test_clopper_pearson_matches_scipy_exact_interval():
    n, alpha = 300, 0.01
    k = torch.tensor([0, 1, 17, 150, 299, 300])
    ours = clopper_pearson_lower(k, n, alpha)
    for ki, lo in zip(k.tolist(), ours.tolist()):
        ref = binomtest(ki, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
        assert lo == pytest.approx(ref, abs=1e-12)


def test_predict_matches_binomial_test_and_abstains():
    counts = torch.tensor([[60, 40, 0], [0, 3, 97], [50, 50, 0], [5, 2, 1], [0, 0, 9]])
    alpha = 0.05
    out = predict_from_counts(counts, alpha)
    for row, pred, p in zip(counts.tolist(), out.prediction.tolist(), out.p_value.tolist()):
        a, b = sorted(row, reverse=True)[:2]
        ref = binomtest(a, a + b, 0.5).pvalue
        assert p == pytest.approx(ref, rel=1e-9)
        assert pred == (int(np.argmax(row)) if ref <= alpha else ABSTAIN)
    assert out.prediction.tolist()[1:3] == [2, ABSTAIN]


def test_noise_counts_batched_and_seeded():
    model, x = half_space(0.1)
    xs = x.expand(7, -1)
    a = noise_counts(model, xs, 0.3, 53, 2, generator=gen(3), batch_size=10)
    assert model.max_rows <= 10  # memory bounded by the batch, not by n
    assert a.dtype == torch.int64 and a.sum(1).tolist() == [53] * 7
    b = noise_counts(model, xs, 0.3, 53, 2, generator=gen(3), batch_size=10)
    assert torch.equal(a, b)
    p_hat = a[:, 1].sum().item() / (7 * 53)
    assert abs(p_hat - norm.cdf(0.1 / 0.3)) < 0.08  # counts are of f(x + noise), not of f(x)


def test_certified_accuracy_counts_abstentions_as_wrong():
    model, x = half_space(0.4)
    cert = certify_smoothed(model, x.expand(4, -1), 0.25, n=2000, alpha=0.001, num_classes=2, generator=gen(4))
    labels = torch.tensor([1, 1, 0, 1])
    acc = certified_accuracy(cert, labels, torch.tensor([0.0, 0.2, 10.0]))
    assert acc.tolist() == [0.75, 0.75, 0.0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"n0": 200}, "n0"),
    ],
)
def test_bad_parameters_raise_input_error(kwargs, match):
    model, x = half_space(0.1)
    args = {"sigma": 0.25, "n": 100, "n0": 10, "alpha": 0.01} | kwargs
    sigma = args.pop("sigma")
    with pytest.raises(InputError, match=match):
        certify_smoothed(model, x[None], sigma, num_classes=2, generator=gen(0), **args)


class SoftSmoothed(nn.Module):
    """log E_e softmax f(x + e) over m fixed-per-call draws: a differentiable estimate of the
    smoothed classifier for PGD (Salman et al. 2019's smoothed soft classifier)."""

    def __init__(self, model: nn.Module, sigma: float, m: int, generator: torch.Generator):
        super().__init__()
        self.model, self.sigma, self.m, self.generator = model, sigma, m, generator

    def forward(self, x):
        noise = torch.randn((self.m, *x.shape), generator=self.generator, dtype=x.dtype)
        logits = self.model((x[None] + self.sigma * noise).flatten(0, 1))
        probs = logits.softmax(-1).view(self.m, len(x), -1).mean(0)
        return probs.clamp_min(1e-12).log()


def test_certified_points_survive_pgd_l2_on_the_smoothed_classifier(digits_mlp, digits_test):
    """Sanity, not proof: points certified at radius >= r keep their class (or abstain) under
    PREDICT after PGD-L2 at radius r against a Monte-Carlo estimate of the smoothed classifier."""
    sigma, alpha, r = 0.25, 0.001, 0.25
    x, y = digits_test.x[:40], digits_test.y[:40]
    cert = certify_smoothed(digits_mlp, x, sigma, n=2000, alpha=alpha, num_classes=10, generator=gen(5))
    strong = (cert.prediction == y) & (cert.radius >= r)
    assert int(strong.sum()) >= 5, "too few certified points for the check to mean anything"
    xs, cls = x[strong], cert.prediction[strong]
    soft = SoftSmoothed(digits_mlp, sigma, 64, gen(6))
    adv = PGDL2(steps=20, restarts=1)(soft, xs, cls, r, generator=gen(7)).x_adv
    assert float((adv - xs).flatten(1).norm(dim=1).max()) <= r + 1e-5
    after = predict_smoothed(digits_mlp, adv, sigma, n=2000, alpha=alpha, num_classes=10, generator=gen(8))
    broken = (after.prediction != ABSTAIN) & (after.prediction != cls)
    assert int(broken.sum()) == 0, f"{int(broken.sum())} certified points changed class"
    # The attack is real: at four times the radius it changes the smoothed class of some points.
    far = PGDL2(steps=20, restarts=1)(soft, xs, cls, 4 * r, generator=gen(7)).x_adv
    far_pred = predict_smoothed(digits_mlp, far, sigma, n=2000, alpha=alpha, num_classes=10, generator=gen(9))
    assert int(((far_pred.prediction != ABSTAIN) & (far_pred.prediction != cls)).sum()) > 0


def test_predict_works_for_two_classes_and_refuses_one():
    decided = predict_from_counts(torch.tensor([[990, 10], [500, 500]]), alpha=0.001)
    assert decided.prediction.tolist() == [0, ABSTAIN]
    with pytest.raises(InputError, match="at least two classes"):
        predict_from_counts(torch.tensor([[1000]]), alpha=0.001)
