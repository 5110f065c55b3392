"""The certified-training loss as Shi et al. 2021 publish it: the robust IBP loss alone once
eps > 0 (natural-CE mixing only on request), and the warm-up regularisers from the eps = 0 epoch on,
on the intervals of a tiny box."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from robustcli.certify.ibp import ibp_bounds
from robustcli.certify.regularizers import input_radius, relu_balance_loss, tightness_loss
from robustcli.certify.spec import margin_spec
from robustcli.certify.training import _step_loss, natural_weight, recipe_config, robust_ce
from robustcli.commands.train_ibp import build_model
from robustcli.data import load_dataset


@pytest.fixture(scope="module")
def batch():
    d = load_dataset("digits", "train").head(64)
    model = build_model("digits-mlp-bn", "digits", (), (), "ibp", seed=0).train()
    return model, d.x, d.y


def _loss(model, x, y, config, step: int):
    schedule = config.schedule(10)
    torch.manual_seed(0)
    return _step_loss(model, x, y, schedule(step), step, schedule, config, 10, None), schedule(step)


def test_once_eps_is_positive_the_loss_is_the_robust_loss_alone(batch):
    model, x, y = batch
    config = recipe_config("short", 0.1, 10, warmup=4, regularize=False)
    step = 25  # in the ramp: 0 < eps_t < eps_max
    (loss, (natural, robust, reg), _), eps_t = _loss(model, x, y, config, step)
    assert 0 < eps_t < 0.1 and reg == 0.0
    lower, _ = ibp_bounds(model, x, eps_t, "linf", margin_spec(y, 10))
    assert loss.item() == pytest.approx(robust_ce(lower).item(), rel=1e-6)
    assert abs(loss.item() - natural) > 1e-3  # natural CE would be visible: it is not in the loss
    # Gowal et al.'s mixing, on request: natural CE weighted 1 - eps_t / eps_max
    mixed = recipe_config("short", 0.1, 10, warmup=4, regularize=False, mix_natural=True)
    (loss_mixed, (natural_m, robust_m, _), _), _ = _loss(model, x, y, mixed, step)
    w = natural_weight(mixed, eps_t / 0.1)
    assert w == pytest.approx(1 - eps_t / 0.1)
    assert loss_mixed.item() == pytest.approx(w * natural_m + (1 - w) * robust_m, rel=1e-5)
    assert natural_weight(config, eps_t / 0.1) == 0.0


def test_regularisers_run_in_the_eps_zero_epoch_on_a_tiny_box(batch):
    model, x, y = batch
    config = recipe_config("short", 0.1, 10, warmup=4)
    assert config.start == 1 and config.regularize
    (loss, (natural, robust, reg), logits), eps_t = _loss(model, x, y, config, step=3)  # epoch 0: eps 0
    assert eps_t == 0.0 and math.isnan(robust)
    res = ibp_bounds(model, x, 1e-6, "linf", margin_spec(y, 10), return_layers=True)
    expected = config.reg_lambda * (
        tightness_loss(res.pre_relu, input_radius(res, model), config.tau) + relu_balance_loss(res.pre_relu, config.tau)
    )
    assert reg == pytest.approx(expected.item(), rel=1e-5) and reg > 0  # IBP init leaves a layer unbalanced
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item() + reg, rel=1e-6)
    # without the regularisers (vanilla) the eps = 0 loss is plain cross-entropy
    plain = recipe_config("vanilla", 0.1, 10, warmup=4)
    (loss_plain, (natural_p, _, reg_p), _), _ = _loss(model, x, y, plain, step=3)
    assert reg_p == 0.0 and loss_plain.item() == pytest.approx(natural_p)
    # at eps_max the regularisers' weight lambda * (1 - eps_t / eps_max) is 0, and they stop
    (_, (_, _, reg_end), _), eps_end = _loss(model, x, y, config, step=60)
    assert eps_end == 0.1 and reg_end == 0.0
