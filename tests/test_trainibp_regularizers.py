"""Warmup regularisers of Shi et al. 2021 (sec. 3.3) on hand-built intervals, and an L2 training step."""

from __future__ import annotations

import pytest
import torch

from robustcli.certify.bounds import Bounds
from robustcli.certify.regularizers import relu_balance_loss, tightness_loss
from robustcli.certify.training import recipe_config, train_ibp


def test_tightness_is_zero_while_bounds_stay_tight_and_grows_when_they_explode():
    r0 = torch.tensor(0.1)
    tight = [Bounds(torch.zeros(4, 8), torch.full((4, 8), 0.15))]  # r0 / r = 0.67 > tau
    loose = [Bounds(torch.zeros(4, 8), torch.full((4, 8), 1.0))]  # r0 / r = 0.1
    assert tightness_loss(tight, r0, tau=0.5).item() == 0
    assert tightness_loss(loose, r0, tau=0.5).item() == pytest.approx((0.5 - 0.1) / 0.5)
    both = tightness_loss(tight + loose, r0, tau=0.5).item()
    assert both == pytest.approx(0.4)  # averaged over layers


def test_relu_balance_penalises_imbalance_only():
    # Active neurons: centre 1 (l > 0); inactive: centre -1 (u < 0); radius 0.5.
    c = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    balanced = [Bounds(c, torch.full_like(c, 0.5))]
    assert relu_balance_loss(balanced).item() == pytest.approx(0.0)
    # Inactive centres 10x more negative: mean ratio 0.1 -> (0.5 - 0.1) / 0.5 = 0.8, plus the
    # variance-ratio term about the layer mean.
    c2 = torch.tensor([[1.0, 1.0, -10.0, -10.0]])
    lay = Bounds(c2, torch.full_like(c2, 0.5))
    mean_c = c2.mean()
    var_ratio = ((c2[0, :2] - mean_c) ** 2).sum() / ((c2[0, 2:] - mean_c) ** 2).sum()
    expected = (0.5 - 0.1) / 0.5 + max(0.0, 0.5 - min(var_ratio.item(), 1 / var_ratio.item())) / 0.5
    assert relu_balance_loss([lay]).item() == pytest.approx(expected)
    # All inactive: the full penalty for both ratios; all unstable (0/0): no penalty.
    dead = [Bounds(torch.tensor([[-1.0, -2.0, -3.0, -4.0]]), torch.full((1, 4), 0.5))]
    assert relu_balance_loss(dead).item() == pytest.approx(2.0)
    unstable = [Bounds(torch.zeros(1, 4), torch.ones(1, 4))]
    assert relu_balance_loss(unstable).item() == 0.0


def test_regularisers_have_gradients():
    c = torch.tensor([[1.0, 2.0, -10.0, -0.2]], requires_grad=True)
    r = torch.tensor([[0.5, 0.5, 0.5, 0.1]], requires_grad=True)
    loss = relu_balance_loss([Bounds(c, r)]) + tightness_loss([Bounds(c, r)], torch.tensor(0.01))
    loss.backward()
    assert c.grad.abs().sum() > 0 and r.grad.abs().sum() > 0


def test_l2_training_runs_and_logs_eps():
    from robustcli.commands.train_ibp import build_model
    from robustcli.data import load_dataset

    data = load_dataset("digits", "train").head(128)
    model = build_model("digits-mlp-bn", "digits", (), (), "ibp", seed=0)
    config = recipe_config("short", 0.5, 3, norm="l2", warmup=1, batch_size=32)
    result = train_ibp(model, data.x, data.y, config)
    assert [round(s.eps, 6) for s in result.history] == [0.0, 0.5, 0.5]
    assert all(torch.isfinite(torch.tensor(s.loss)) for s in result.history)
