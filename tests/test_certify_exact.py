"""Native IBP against closed-form exact answers that need no auto_LiRPA.

For one affine map y = W x + b over the L2 ball ||x' - x||_2 <= eps (inside [0, 1], so the
clipping box is inactive), the exact range of each output k is W_k x + b_k +- eps ||W_k||_2, and
of a margin row c it is c (W x + b) +- eps ||W^T c||_2 (the dual norm of L2 is L2). IBP carries the
ball exactly through the first affine layer, so its bounds must equal these to rounding. A radius
that loses its square root (eps ||W_k||^2) or uses the L1/Linf dual fails here.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustcli.certify.ibp import ibp_bounds
from robustcli.certify.spec import margin_spec
from robustcli.core.nn import Normalized


def _interior_points(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    return 0.35 + 0.3 * torch.rand(n, d, generator=g, dtype=torch.float64)  # eps <= 0.3 keeps the ball in [0, 1]


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_l2_single_linear_layer_margins_are_exact(eps):
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(7, 4).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(4, 7, generator=g, dtype=torch.float64))
    x = _interior_points(6, 7, g)
    y = torch.randint(0, 4, (6,), generator=g)
    spec = margin_spec(y, 4, torch.float64)
    lower, upper = ibp_bounds(model, x, eps, "l2", spec)
    w = torch.einsum("nsk,ki->nsi", spec, model.weight)  # rows of C W
    centre = torch.einsum("nsk,nk->ns", spec, model(x))
    exact = eps * w.norm(dim=2)
    torch.testing.assert_close(lower, centre - exact, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(upper, centre + exact, rtol=1e-9, atol=1e-12)
    # The bound is attained: the point x - eps * w / ||w|| reaches the lower bound (so it is exact, not loose).
    s = 0
    worst = x - eps * w[:, s] / w[:, s].norm(dim=1, keepdim=True)
    assert torch.allclose(torch.einsum("nk,nk->n", spec[:, s], model(worst)), lower[:, s], atol=1e-10)


def test_l2_first_layer_pre_relu_bounds_are_exact():
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    x = _interior_points(4, 5, g)
    eps = 0.2
    res = ibp_bounds(model, x, eps, "l2", None, return_layers=True)
    first = res.pre_relu[0]
    radius = eps * model[0].weight.norm(dim=1)
    torch.testing.assert_close(first.centre, model[0](x), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(first.radius, radius.expand_as(first.radius), rtol=1e-9, atol=1e-12)


def test_linf_single_linear_layer_margins_are_exact():
    g = torch.Generator().manual_seed(2)
    model = nn.Linear(7, 4).double()
    x = _interior_points(5, 7, g)
    y = torch.randint(0, 4, (5,), generator=g)
    spec = margin_spec(y, 4, torch.float64)
    lower, _ = ibp_bounds(model, x, 0.1, "linf", spec)
    w = torch.einsum("nsk,ki->nsi", spec, model.weight)
    exact = torch.einsum("nsk,nk->ns", spec, model(x)) - 0.1 * w.abs().sum(2)
    torch.testing.assert_close(lower, exact, rtol=1e-9, atol=1e-12)


def test_unsound_bound_is_reported_at_the_cli_with_exit_code_3(run_cli, tmp_path, monkeypatch, digits_mlp):
    """A bound engine that 'verifies' every point (here: IBP replaced by a lie) must be caught by the
    PGD cross-check: exit code 3, one line naming the point, eps and method, no traceback, no report."""
    from robustcli.certify import bounders

    def lying_lower(self, inputs, C, d=None):
        return torch.ones(C.shape[:2], dtype=C.dtype, device=C.device)

    monkeypatch.setattr(bounders.IBPBounder, "lower", lying_lower)
    out = tmp_path / "cert.json"
    r = run_cli("certify", "--model", "digits-mlp", "--n", "40", "--eps", "0.3", "--method", "ibp",
                "--pgd-steps", "10", "--json", out)
    assert r.exit_code == 3, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "certifying" not in ln]
    assert len(lines) == 1 and lines[0].startswith("internal error: unsound bound: point "), r.stderr
    assert "verified by ibp at linf eps=0.3" in lines[0] and "Traceback" not in r.output
    assert not out.exists()


def test_l2_ball_through_normalisation_and_small_weights_is_exact():
    """The ball is carried exactly through elementwise affine maps (normalisation, eval-mode batch
    norm): their scales multiply, and a small margin row (||W^T c|| < 1) keeps its square root."""
    g = torch.Generator().manual_seed(4)
    inner = nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(7, 4)).double().eval()
    with torch.no_grad():  # two elementwise affine maps in a row: (x - 0.3) / 0.5, then BN's 3 z / 2 + 1
        inner[0].running_var.fill_(4.0 - inner[0].eps)
        inner[0].weight.fill_(3.0)
        inner[0].bias.fill_(1.0)
        inner[2].weight.copy_(0.02 * torch.randn(4, 7, generator=g, dtype=torch.float64))
    model = Normalized(inner, mean=[0.3], std=[0.5]).double()
    x = _interior_points(5, 7, g).view(5, 1, 1, 7)
    eps = 0.1
    y = torch.randint(0, 4, (5,), generator=g)
    spec = margin_spec(y, 4, torch.float64)
    lower, _ = ibp_bounds(model, x, eps, "l2", spec)
    w = torch.einsum("nsk,ki->nsi", spec, inner[2].weight) * 1.5 / 0.5  # the map from x is W (3 / 2) / std
    centre = torch.einsum("nsk,nk->ns", spec, model(x))
    assert (eps * w.norm(dim=2) < 1).all()
    torch.testing.assert_close(lower, centre - eps * w.norm(dim=2), rtol=1e-9, atol=1e-12)
