"""IBP initialisation (Shi et al. 2021): bound width stays about constant per layer at init."""

from __future__ import annotations

import math

import torch
from torch import nn

from robustcli.certify.ibp import ibp_bounds
from robustcli.certify.init import ibp_init, ibp_sigma
from robustcli.core.nn import Residual


def deep_mlp(depth: int = 8, width: int = 256, d_in: int = 64) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    a = d_in
    for _ in range(depth):
        layers += [nn.Linear(a, width), nn.ReLU()]
        a = width
    layers.append(nn.Linear(a, 10))
    return nn.Sequential(*layers)


def per_layer_growth(model: nn.Module) -> list[float]:
    """Mean pre-ReLU radius of layer i+1 over that of layer i, measured with native IBP."""
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        res = ibp_bounds(model.eval(), x, 0.01, "linf", None, return_layers=True)
    radii = [b.radius.mean().item() for b in res.pre_relu]
    return [b / a for a, b in zip(radii[:-1], radii[1:])]


def geometric_mean(v: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in v) / len(v))


def test_ibp_init_keeps_bound_width_about_constant_per_layer():
    torch.manual_seed(0)
    model = ibp_init(deep_mlp(), torch.Generator().manual_seed(0))
    growth = per_layer_growth(model)
    assert len(growth) == 7
    assert 0.75 < geometric_mean(growth) < 1.3, growth
    assert all(0.6 < g < 1.6 for g in growth), growth


def test_default_init_bound_width_blows_up():
    torch.manual_seed(0)
    growth = per_layer_growth(deep_mlp())
    # torch's default (Kaiming-uniform, a=sqrt(5)) gives about sqrt(fan_in) / 4 = 4 per layer here.
    assert geometric_mean(growth) > 2.5, growth
    total = math.prod(growth)
    assert total > 1000, total


def test_ibp_init_distribution_and_what_it_leaves_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(400, 300), nn.BatchNorm1d(300), nn.ReLU(), nn.Linear(300, 10))
    last_before = model[3].weight.clone()
    bias_before = model[0].bias.clone()
    ibp_init(model, torch.Generator().manual_seed(0))
    w = model[0].weight
    assert abs(w.std().item() / ibp_sigma(w) - 1) < 0.02  # sigma = sqrt(2 pi) / 400
    assert abs(ibp_sigma(w) - math.sqrt(2 * math.pi) / 400) < 1e-12
    assert abs(w.mean().item()) < 0.05 * ibp_sigma(w)
    assert torch.equal(model[3].weight, last_before)  # the last layer keeps its init
    assert torch.equal(model[0].bias, bias_before)  # 1-D parameters untouched
    assert torch.equal(model[1].weight, torch.ones(300))


def test_ibp_init_conv_fan_in_and_residual_halving():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    model = nn.Sequential(conv, nn.ReLU(), Residual(body), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 10))
    ibp_init(model, torch.Generator().manual_seed(0))
    sigma_conv = math.sqrt(2 * math.pi) / (8 * 9)
    assert abs(conv.weight.std().item() / sigma_conv - 1) < 0.1
    sigma_body = math.sqrt(2 * math.pi) / (16 * 9)
    assert abs(body[0].weight.std().item() / sigma_body - 1) < 0.1
    assert abs(body[2].weight.std().item() / (sigma_body / 2) - 1) < 0.1  # feeds the residual add


def test_ibp_init_is_reproducible_from_the_generator():
    a = ibp_init(deep_mlp(3, 32), torch.Generator().manual_seed(5))
    b = ibp_init(deep_mlp(3, 32), torch.Generator().manual_seed(5))
    for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        if p.dim() > 1 and p.shape[0] != 10:
            assert torch.equal(p, q)
