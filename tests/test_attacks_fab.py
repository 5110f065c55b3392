"""FAB-T: the exact minimal perturbation on a linear model, and no weaker than APGD-T on a built-in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from robustcli.attacks.apgd import APGD
from robustcli.attacks.evaluate import evaluate
from robustcli.attacks.fab import FABTargeted
from robustcli.attacks.geometry import LpBall

CPU = torch.device("cpu")


def linear_model(d: int, classes: int, seed: int, scale: float) -> nn.Module:
    torch.manual_seed(seed)
    lin = nn.Linear(d, classes)
    with torch.no_grad():
        lin.weight.mul_(scale)
    return nn.Sequential(nn.Flatten(), lin).eval()


def halfspace_distance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, norm: str) -> torch.Tensor:
    """Distance to {Z_t >= Z_y} with no box: (Z_y - Z_t) / ||w_y - w_t||_dual (dual of Linf is L1)."""
    lin = model[1]
    with torch.no_grad():
        z = model(x)
    gap = z.gather(1, y[:, None]).squeeze(1) - z.gather(1, t[:, None]).squeeze(1)
    w = lin.weight[y] - lin.weight[t]
    dual = w.abs().sum(1) if norm == "linf" else w.norm(dim=1)
    return gap / dual


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_finds_the_minimal_perturbation_of_a_linear_model(norm):
    """Any misclassification counts (AutoAttack's FAB-T): the minimum is the distance to the
    nearest half-space {Z_j >= Z_y}, which FAB reaches when it targets every other class."""
    d, k = 16, 5
    model = linear_model(d, k, seed=0, scale=3.0)
    g = torch.Generator().manual_seed(1)
    x = 0.4 + 0.2 * torch.rand(12, 1, 4, 4, generator=g)  # interior: the box does not bind
    with torch.no_grad():
        y = model(x).argmax(1)
    nearest = torch.stack([halfspace_distance(model, x, y, (y + j) % k, norm) for j in range(1, k)]).amin(0)
    assert (nearest < 0.35).all()  # small enough that the minimal point stays inside [0, 1]
    result = FABTargeted(norm=norm, steps=30, target_classes=k - 1)(model, x, y)
    assert result.success.all()
    with torch.no_grad():
        assert (model(result.x_adv).argmax(1) != y).all()
    assert torch.allclose(result.perturbation, nearest, rtol=1e-4, atol=1e-6), (result.perturbation, nearest)
    # with two classes a user's target is the only other class: the same exact distance
    two = linear_model(d, 2, seed=5, scale=3.0)
    with torch.no_grad():
        y2 = two(x).argmax(1)
    result = FABTargeted(norm=norm, steps=30)(two, x, y2, targets=1 - y2)
    assert result.success.all()
    assert torch.allclose(result.perturbation, halfspace_distance(two, x, y2, 1 - y2, norm), rtol=1e-4, atol=1e-6)


def test_fab_linf_is_exact_where_the_box_binds():
    """Half the pixels at 0 or 1, as in MNIST: the minimum is a linear program (scipy's HiGHS)."""
    d, k = 16, 3
    model = linear_model(d, k, seed=2, scale=1.0)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(8, 1, 4, 4, generator=g)
    x[:, :, :2] = (x[:, :, :2] > 0.5).float()
    with torch.no_grad():
        y = model(x).argmax(1)
    assert (y == y[0]).float().mean() < 1  # several classes win: the LPs differ by point
    result = FABTargeted(norm="linf", steps=60, target_classes=k - 1)(model, x, y)
    w_all, b_all = model[1].weight.detach().double().numpy(), model[1].bias.detach().double().numpy()
    for i in range(len(x)):
        xi = x[i].flatten().double().numpy()
        best = np.inf
        for t in range(k):
            if t == y[i]:
                continue
            w = w_all[t] - w_all[y[i]]
            c = b_all[t] - b_all[y[i]]
            # variables (delta, s): min s with -s <= delta <= s, w . (x + delta) + c >= 0, 0 <= x + delta <= 1
            obj = np.r_[np.zeros(d), 1.0]
            a_ub = np.vstack([np.c_[np.eye(d), -np.ones(d)], np.c_[-np.eye(d), -np.ones(d)], np.r_[-w, 0.0][None]])
            b_ub = np.r_[np.zeros(2 * d), w @ xi + c]
            bounds = [(-xi[j], 1 - xi[j]) for j in range(d)] + [(0, None)]
            lp = linprog(obj, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
            if lp.success:  # otherwise this class cannot win inside the box
                best = min(best, lp.fun)
        assert bool(result.success[i]) == np.isfinite(best), i
        if np.isfinite(best):
            assert result.perturbation[i].item() == pytest.approx(best, rel=1e-3, abs=1e-6), i


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_step_to_hyperplane_matches_a_bisection(norm):
    """The sorted closed form against bisection on the scalar of the optimality conditions:
    d = clip(tau * sign(w'), box) in Linf, clip(tau * w', box) in L2, w' = sign(c) w, w . d = c."""
    ball = LpBall(norm)
    g = torch.Generator().manual_seed(4)
    p = torch.rand(64, 10, generator=g, dtype=torch.float64)
    p[:, :3] = (p[:, :3] > 0.5).double()  # some coordinates on the box
    w = torch.randn(64, 10, generator=g, dtype=torch.float64)
    c = 0.5 * torch.randn(64, generator=g, dtype=torch.float64)
    d = ball.step_to_hyperplane(p, w, c)
    ws = w * c.sign()[:, None]
    direction = ws.sign() if norm == "linf" else ws

    def move(tau: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.maximum(tau[:, None] * direction, -p), 1 - p)

    lo, hi = torch.zeros(64, dtype=torch.float64), torch.full((64,), 1e6, dtype=torch.float64)
    for _ in range(200):
        mid = (lo + hi) / 2
        short = (ws * move(mid)).sum(1) < c.abs()
        lo, hi = torch.where(short, mid, lo), torch.where(short, hi, mid)
    ref = move(hi)
    assert torch.allclose(d, ref, atol=1e-7)
    reachable = (ws * move(torch.full((64,), 1e6, dtype=torch.float64))).sum(1) >= c.abs()
    assert torch.allclose((w * d).sum(1)[reachable], c[reachable], atol=1e-9)


def test_fab_t_no_weaker_than_apgd_t_on_a_built_in(digits_mlp, digits_test):
    d = digits_test.head(60)
    x, y = d.x, d.y
    for norm, eps in (("linf", 0.1), ("l2", 0.5)):
        ev = evaluate(
            digits_mlp, x, y,
            [(APGD(norm=norm, loss="dlr-targeted", steps=50), [eps]), (FABTargeted(norm=norm, steps=50), [eps])],
            device=CPU,
        )  # fmt: skip
        apgd_t, fab_t = ev.outcomes[0].robust_accuracy, ev.outcomes[1].robust_accuracy
        assert fab_t <= apgd_t + 0.01, (norm, fab_t, apgd_t)
        assert fab_t < 0.9 * ev.clean_accuracy  # it breaks a real share of points
