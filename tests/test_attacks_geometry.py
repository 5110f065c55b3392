"""The Lp-ball geometry PGD, APGD, FAB and the inner maximisation share: exact properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from robustcli.attacks.geometry import LpBall

D = 6


def _flat_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    f = t.flatten(1)
    return f.abs().amax(1) if norm == "linf" else f.norm(dim=1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_is_the_closest_point_of_the_ball(norm):
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(200, 1, 2, 3, generator=g, dtype=torch.float64)
    p = LpBall(norm).project(delta, 0.5)
    n = _flat_norm(p, norm)
    assert (n <= 0.5 + 1e-12).all()
    inside = _flat_norm(delta, norm) <= 0.5
    torch.testing.assert_close(p[inside], delta[inside])
    if norm == "l2":  # outside: radial scaling onto the sphere
        torch.testing.assert_close(n[~inside], torch.full_like(n[~inside], 0.5))
        torch.testing.assert_close(p[~inside], delta[~inside] * (0.5 / _flat_norm(delta[~inside], "l2")).view(-1, 1, 1, 1))
    else:
        torch.testing.assert_close(p, delta.clamp(-0.5, 0.5))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_ascent_direction_has_unit_norm_and_maximises_the_inner_product(norm):
    g = torch.Generator().manual_seed(1)
    grad = torch.randn(50, D, generator=g, dtype=torch.float64)
    d = LpBall(norm).ascent_direction(grad)
    torch.testing.assert_close(_flat_norm(d, norm), torch.ones(50, dtype=torch.float64))
    dual = grad.abs().sum(1) if norm == "linf" else grad.norm(dim=1)  # the dual norm: the maximum
    torch.testing.assert_close((d * grad).sum(1), dual)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_starts_fill_the_ball_uniformly_and_reach_the_sphere(norm):
    ball, eps, n = LpBall(norm), 0.3, 4000
    x = torch.zeros(n, 4, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    inside = ball.uniform_in_ball(x, eps, g)
    r = _flat_norm(inside, norm) / eps
    assert (r <= 1 + 1e-12).all()
    # Uniform in a 4-dimensional ball: (r / eps)^4 is uniform on [0, 1], whatever the norm.
    u = r**4
    assert abs(u.mean().item() - 0.5) < 0.02 and abs((u < 0.25).double().mean().item() - 0.25) < 0.03
    sphere = ball.on_sphere(x, eps, g)
    torch.testing.assert_close(_flat_norm(sphere, norm), torch.full((n,), eps, dtype=torch.float64))
    assert (sphere.mean(0).abs() < 0.02).all()  # no preferred direction


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_step_to_hyperplane_is_the_smallest_feasible_step(norm):
    """Against a linear (Linf) or quadratic (L2) program: min ||d|| s.t. w.d = c, 0 <= p + d <= 1."""
    g = torch.Generator().manual_seed(3)
    p = torch.rand(40, D, generator=g, dtype=torch.float64)
    w = torch.randn(40, D, generator=g, dtype=torch.float64)
    c = torch.randn(40, generator=g, dtype=torch.float64) * 0.6
    d = LpBall(norm).step_to_hyperplane(p, w, c)
    assert ((p + d) >= -1e-9).all() and ((p + d) <= 1 + 1e-9).all()
    for i in range(40):
        best = _smallest_step(p[i].numpy(), w[i].numpy(), float(c[i]), norm)
        if best is None:  # the box cannot reach the hyperplane: the step goes to the box's nearest side
            assert float((w[i] * d[i]).sum()) * np.sign(float(c[i])) < abs(float(c[i]))
            continue
        assert float((w[i] * d[i]).sum()) == pytest.approx(float(c[i]), abs=1e-7)
        assert float(_flat_norm(d[i : i + 1], norm)) == pytest.approx(best, rel=1e-5, abs=1e-7)


def _smallest_step(p: np.ndarray, w: np.ndarray, c: float, norm: str) -> float | None:
    lo, hi = -p, 1 - p
    if norm == "linf":  # variables (d, t): min t, -t <= d_i <= t
        n = len(p)
        cost = np.r_[np.zeros(n), 1.0]
        a_ub = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))]])
        res = linprog(cost, A_ub=a_ub, b_ub=np.zeros(2 * n), A_eq=np.r_[w, 0.0][None], b_eq=[c],
                      bounds=[*zip(lo, hi), (0, None)], method="highs")  # fmt: skip
        return float(res.x[-1]) if res.status == 0 else None
    # L2: the KKT solution d_i = clip(lambda w_i, lo_i, hi_i) with w.d(lambda) = c, by bisection.
    reach = lambda lam: float((np.clip(lam * w, lo, hi) * w).sum())  # noqa: E731
    if not min(reach(-1e9), reach(1e9)) <= c <= max(reach(-1e9), reach(1e9)):
        return None
    a, b = -1e9, 1e9
    for _ in range(400):
        m = (a + b) / 2
        a, b = (m, b) if reach(m) < c else (a, m)
    return float(np.linalg.norm(np.clip(a * w, lo, hi)))
