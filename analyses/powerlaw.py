"""Power-law fit err(eps) = A * eps^gamma on log-log axes (Cubuk et al. 2017, section 3).

Cubuk et al. observe that adversarial error grows as a power of eps at small eps and saturates
later. The paper leaves open where "small eps" ends; our rule (`select_regime`) keeps grid points
whose error is measurable and not yet saturating:

* at least `min_broken` points broken (a single flip is too noisy to take a logarithm of), and
* error <= `max_error` (default 0.5: past half the points the curve bends towards 1).

gamma is the slope of an ordinary least-squares line through (log eps, log err). Its confidence
interval comes from the slope's standard error with a Student-t quantile on k - 2 degrees of
freedom (k points in the regime); `bootstrap_gamma` adds a second interval that also captures
the sampling noise of the evaluated points (resampling points, refitting on the same regime).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_ERROR = 0.5
DEFAULT_MIN_BROKEN = 2


@dataclass
class PowerLawFit:
    gamma: float  # exponent (log-log slope)
    amplitude: float  # A
    gamma_ci: tuple[float, float]  # t-interval from the slope's standard error (nan when k == 2)
    gamma_se: float
    r2: float  # coefficient of determination on log err
    level: float  # confidence level of gamma_ci
    eps: np.ndarray  # the eps values in the regime
    err: np.ndarray  # the errors there

    def predict(self, eps: np.ndarray) -> np.ndarray:
        return self.amplitude * np.asarray(eps, dtype=float) ** self.gamma

    def summary(self) -> dict:
        return {
            "gamma": self.gamma,
            "amplitude": self.amplitude,
            "gamma_ci": list(self.gamma_ci),
            "gamma_se": self.gamma_se,
            "r2": self.r2,
            "level": self.level,
            "points": len(self.eps),
            "eps_range": [float(self.eps.min()), float(self.eps.max())],
        }


def select_regime(
    err: np.ndarray,
    broken: np.ndarray,
    *,
    max_error: float = DEFAULT_MAX_ERROR,
    min_broken: int = DEFAULT_MIN_BROKEN,
) -> np.ndarray:
    """Mask of the grid points in the small-eps power-law regime (rule in the module docstring)."""
    err = np.asarray(err, dtype=float)
    broken = np.asarray(broken)
    return (broken >= min_broken) & (err > 0) & (err <= max_error)


def fit_power_law(eps: np.ndarray, err: np.ndarray, *, level: float = 0.95) -> PowerLawFit:
    """Least-squares fit of log err = log A + gamma log eps on the given points (all > 0).

    Raises ValueError with fewer than two points or non-positive values.
    """
    from scipy.special import stdtrit  # Student-t quantile; scipy.stats costs seconds to import

    eps = np.asarray(eps, dtype=float)
    err = np.asarray(err, dtype=float)
    if len(eps) != len(err):
        raise ValueError("eps and err differ in length")
    if len(eps) < 2:
        raise ValueError(f"a power-law fit needs at least 2 points in the regime, got {len(eps)}")
    if np.any(eps <= 0) or np.any(err <= 0):
        raise ValueError("a log-log fit needs eps > 0 and err > 0")
    lx, ly = np.log(eps), np.log(err)
    if np.ptp(lx) == 0:
        raise ValueError("a power-law fit needs at least two distinct eps values")
    xm, ym = lx.mean(), ly.mean()
    sxx = float(((lx - xm) ** 2).sum())
    gamma = float(((lx - xm) * (ly - ym)).sum() / sxx)
    intercept = float(ym - gamma * xm)
    resid = ly - (intercept + gamma * lx)
    ss_res = float((resid**2).sum())
    ss_tot = float(((ly - ym) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    k = len(eps)
    if k > 2:
        se = math.sqrt(ss_res / (k - 2) / sxx)
        half = float(stdtrit(k - 2, 0.5 + level / 2)) * se
        ci = (gamma - half, gamma + half)
    else:
        se, ci = math.nan, (math.nan, math.nan)
    return PowerLawFit(gamma, math.exp(intercept), ci, se, r2, level, eps, err)


def bootstrap_gamma(
    broken: np.ndarray,
    eps: np.ndarray,
    regime: np.ndarray,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of gamma when the evaluated points are resampled with replacement.

    `broken` is a bool matrix (points x eps) over the attacked points; the fit uses the grid
    points in `regime` (fixed from the full data). Resamples with an empty cell (error 0 in the
    regime) are skipped; returns (nan, nan) if fewer than half the resamples are usable.
    """
    broken = np.asarray(broken, dtype=bool)
    cols = np.flatnonzero(regime)
    if len(cols) < 2 or broken.shape[0] == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    lx = np.log(np.asarray(eps, dtype=float)[cols])
    xm = lx.mean()
    sxx = ((lx - xm) ** 2).sum()
    sub = broken[:, cols].astype(float)
    n = sub.shape[0]
    idx = rng.integers(0, n, size=(resamples, n))
    errs = sub[idx].mean(1)  # (resamples, k)
    ok = (errs > 0).all(1)
    if ok.sum() < resamples / 2:
        return (math.nan, math.nan)
    ly = np.log(errs[ok])
    slopes = ((lx - xm) * (ly - ly.mean(1, keepdims=True))).sum(1) / sxx
    lo, hi = np.quantile(slopes, [0.5 - level / 2, 0.5 + level / 2])
    return (float(lo), float(hi))
