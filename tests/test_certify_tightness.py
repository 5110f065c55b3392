"""Tightness (Mao et al. 2023): closed form on deep linear nets, 1 for one layer, falls with depth."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from robustcli.certify import margin_spec
from robustcli.certify.tightness import deep_linear_tau, spec_jacobian, tightness
from certify_nets import random_cnn, random_mlp


def deep_linear(width: int, depth: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [nn.Linear(width, width, bias=False) for _ in range(depth)]
    for layer in layers:
        nn.init.normal_(layer.weight)
    return nn.Sequential(*layers)


def measured_tau(width: int, depth: int, seeds: int = 4) -> float:
    """Mean tau over seeds and output rows (a linear net's tau does not depend on the point)."""
    vals = []
    for seed in range(seeds):
        model = deep_linear(width, depth, seed)
        x = torch.rand(1, width)
        spec = torch.eye(width)[None]  # every output row
        vals.append(tightness(model, x, spec).mean)
    return statistics.mean(vals)


@pytest.mark.parametrize("width,depth", [(64, 2), (64, 3), (128, 2), (128, 4)])
def test_deep_linear_tau_matches_the_closed_form(width, depth):
    assert measured_tau(width, depth) == pytest.approx(deep_linear_tau(width, depth), rel=0.1)


def test_tau_falls_with_width_and_depth():
    taus = {(w, d): measured_tau(w, d, seeds=2) for w in (32, 128) for d in (2, 3, 4)}
    for d in (2, 3, 4):
        assert taus[(128, d)] < taus[(32, d)]
    for w in (32, 128):
        assert taus[(w, 2)] > taus[(w, 3)] > taus[(w, 4)]


def test_single_linear_layer_is_exact():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    x = torch.rand(3, 1, 4, 4)
    t = tightness(model, x, margin_spec(torch.tensor([0, 1, 2]), 5))
    torch.testing.assert_close(t.tau, torch.ones(3, 4))


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_relu_nets_tau_in_unit_interval_and_eps_free(net):
    model = random_mlp(4, True, 0) if net == "mlp" else random_cnn(3, True, 0)
    x = torch.rand(4, 1, 4, 4) if net == "mlp" else torch.rand(4, 1, 8, 8)
    spec = margin_spec(model(x).argmax(1), 5)
    t1, t2 = tightness(model, x, spec, eps=0.1), tightness(model, x, spec, eps=0.3)
    ok = ~torch.isnan(t1.tau)
    assert ok.any() and (t1.tau[ok] <= 1 + 1e-5).all() and (t1.tau[ok] > 0).all()
    torch.testing.assert_close(t1.tau, t2.tau, equal_nan=True)
    torch.testing.assert_close(t2.exact_radius, 3 * t1.exact_radius)


def test_jacobian_matches_finite_differences():
    model = random_mlp(3, True, 1).double()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    spec = margin_spec(torch.tensor([1, 2]), 5).double()
    jac = spec_jacobian(model, x, spec)
    h = 1e-6
    e = torch.zeros_like(x)
    e[:, 0, 1, 2] = h
    with torch.no_grad():
        fd = (torch.einsum("nsk,nk->ns", spec, model(x + e)) - torch.einsum("nsk,nk->ns", spec, model(x - e))) / (2 * h)
    torch.testing.assert_close(jac[:, :, 6], fd, atol=1e-6, rtol=1e-5)


def test_at_initialisation_is_a_seeded_fresh_copy():
    from robustcli.certify.tightness import at_initialisation

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[1].weight.mul_(5.0)  # "trained": far from any init
        model[2].running_mean.fill_(2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_state = torch.get_rng_state()
    a, b, c = at_initialisation(model, 1), at_initialisation(model, 1), at_initialisation(model, 2)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the caller's random stream is untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model too
    assert torch.equal(a[1].weight, b[1].weight) and not torch.equal(a[1].weight, c[1].weight)
    assert a[1].weight.abs().max() <= 1 / 4  # PyTorch's default Linear init: U(-1/sqrt(fan_in), ...)
    assert torch.equal(a[2].running_mean, torch.zeros(8))
    with pytest.raises(ValueError, match="cannot be re-initialised"):
        at_initialisation(_ParamOnly(), 0)


class _ParamOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return x * self.w


def test_tau_at_init_falls_with_cnn_depth():
    """Mao et al.'s Figure 3 shape: at default init, deeper CNNs are looser."""
    from robustcli.archs import _cnn
    from robustcli.certify.tightness import at_initialisation

    x = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(32, dtype=torch.long)
    taus = []
    for chans in ([16], [16, 32], [16, 32, 32]):
        net = at_initialisation(_cnn(1, 28, chans, 100, 10), seed=0)
        taus.append(tightness(net, x, margin_spec(y, 10)).mean)
    assert taus[0] > taus[1] > taus[2] > 0
