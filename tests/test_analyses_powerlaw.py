"""Power-law fit: recovers a known exponent; the regime rule; bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest

from robustcli.analyses.powerlaw import bootstrap_gamma, fit_power_law, select_regime
from robustcli.analyses.scaling import fit_curve, log_grid


def test_fit_recovers_exact_power_law():
    eps = log_grid(1e-3, 1e-1, 8)
    fit = fit_power_law(eps, 3.0 * eps**1.7)
    assert fit.gamma == pytest.approx(1.7, abs=1e-9)
    assert fit.amplitude == pytest.approx(3.0, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.gamma_ci[0] <= 1.7 <= fit.gamma_ci[1]


def test_fit_with_noise_puts_gamma_in_its_interval():
    rng = np.random.default_rng(0)
    eps = log_grid(1e-3, 1e-1, 12)
    err = 0.5 * eps**1.3 * np.exp(rng.normal(0, 0.05, len(eps)))
    fit = fit_power_law(eps, err)
    assert abs(fit.gamma - 1.3) < 0.1
    assert fit.gamma_ci[0] < 1.3 < fit.gamma_ci[1]
    assert fit.gamma_ci[1] - fit.gamma_ci[0] < 0.3
    assert 0.95 < fit.r2 < 1.0


def test_synthetic_binomial_curve_recovers_gamma_with_bootstrap():
    """Per-point flip thresholds drawn so that P(threshold < eps) = (eps / 0.2)^gamma exactly."""
    gamma, n = 1.5, 4000
    rng = np.random.default_rng(1)
    thresholds = 0.2 * rng.uniform(size=n) ** (1 / gamma)
    eps = log_grid(5e-3, 0.3, 14)
    broken = thresholds[:, None] < eps[None, :]
    curve = fit_curve("synthetic", "linf", eps, broken, np.zeros(len(eps)), max_error=0.5, min_broken=2, level=0.95, resamples=400, seed=0)
    assert curve.fit is not None
    assert not curve.regime[-1]  # saturated points (error 1) are left out
    assert abs(curve.fit.gamma - gamma) < 0.1
    lo, hi = curve.bootstrap_ci
    assert lo < gamma < hi


def test_regime_rule():
    err = np.array([0.0, 0.001, 0.01, 0.1, 0.4, 0.6, 1.0])
    broken = np.array([0, 1, 10, 100, 400, 600, 1000])
    assert select_regime(err, broken, max_error=0.5, min_broken=2).tolist() == [False, False, True, True, True, False, False]


def test_fit_needs_points_and_positive_values():
    with pytest.raises(ValueError):
        fit_power_law(np.array([0.1]), np.array([0.2]))
    with pytest.raises(ValueError):
        fit_power_law(np.array([0.1, 0.2]), np.array([0.0, 0.2]))
    eps = log_grid(1e-3, 1e-2, 4)
    broken = np.zeros((50, 4), dtype=bool)
    curve = fit_curve("x", "linf", eps, broken, np.zeros(4), max_error=0.5, min_broken=2, level=0.95, resamples=10, seed=0)
    assert curve.fit is None and "widen the eps range" in curve.fit_problem
    assert np.isnan(bootstrap_gamma(broken, eps, np.zeros(4, dtype=bool))[0])
