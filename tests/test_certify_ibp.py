"""Soundness and API of native IBP: certified lower bounds never exceed any margin in the ball."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustcli.certify import ibp_bounds, margin_spec, verified
from robustcli.certify.graph import UnsupportedLayer
from robustcli.core.nn import Residual
from certify_nets import pgd_min_spec, random_cnn, random_mlp, sample_ball, spec_values
from robustcli.core.nn import Normalized

CASES = [
    ("mlp", 1, False), ("mlp", 2, False), ("mlp", 3, True), ("mlp", 4, False), ("mlp", 4, True),
    ("cnn", 2, False), ("cnn", 2, True), ("cnn", 3, True), ("cnn-res", 2, True), ("cnn-res", 3, False),
]  # fmt: skip
EPS = {"linf": 0.03, "l2": 0.3}


def build(kind: str, depth: int, bn: bool, seed: int) -> tuple[nn.Module, torch.Tensor]:
    if kind == "mlp":
        return random_mlp(depth, bn, seed), torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    model = random_cnn(depth, bn, seed, residual=kind == "cnn-res")
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    x[:2] = (x[:2] > 0.5).float()  # points on the box's faces exercise the [0, 1] clipping
    return model, x


def tol(v: torch.Tensor) -> torch.Tensor:
    return 1e-5 + 1e-5 * v.abs()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("kind,depth,bn", CASES)
def test_ibp_lower_bound_below_every_margin_in_the_ball(kind, depth, bn, norm):
    seed = 100 * depth + 10 * bn + len(kind)
    model, x = build(kind, depth, bn, seed)
    y = model(x).argmax(1)
    spec = margin_spec(y, 5)
    eps = EPS[norm]
    lower, upper = ibp_bounds(model, x, eps, norm, spec)
    assert lower.shape == (4, 4) and (lower <= upper).all()
    g = torch.Generator().manual_seed(seed)
    for corners, k in ((False, 1000), (True, 300)):
        pts = sample_ball(x, eps, norm, k, g, corners)
        vals = spec_values(model, pts.flatten(0, 1), spec.repeat(k, 1, 1)).view(k, *lower.shape)
        assert (vals >= lower - tol(vals)).all(), f"sampled margin below the certified bound ({kind}, {norm})"
        assert (vals <= upper + tol(vals)).all(), f"sampled margin above the certified upper bound ({kind}, {norm})"
    pgd = pgd_min_spec(model, x, spec, eps, norm, g=g)
    assert (pgd >= lower - tol(pgd)).all(), f"PGD found a margin below the certified bound ({kind}, {norm})"


def test_single_linear_layer_is_exact_in_linf():
    """IBP of one affine layer is exact for a box: the corner search reaches the bound (so the test can fail)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).eval()
    x = 0.25 + 0.5 * torch.rand(4, 1, 4, 4)  # clipping inactive at eps 0.1
    spec = margin_spec(torch.tensor([0, 1, 2, 3]), 5)
    lower, _ = ibp_bounds(model, x, 0.1, "linf", spec)
    with torch.no_grad():
        w = torch.einsum("nsk,ki->nsi", spec, model[1].weight)
        worst = x.flatten(1)[:, None, :] - 0.1 * w.sign()  # the minimising corner per row
        exact = torch.einsum("nsi,nsi->ns", w, worst) + spec @ model[1].bias
    torch.testing.assert_close(lower, exact, atol=1e-5, rtol=1e-5)


def test_merging_the_last_layer_is_tighter_than_subtracting_logit_intervals():
    model, x = build("mlp", 3, False, 1)
    spec = margin_spec(model(x).argmax(1), 5)
    lower, _ = ibp_bounds(model, x, 0.03, "linf", spec)
    lo, hi = ibp_bounds(model, x, 0.03, "linf")
    naive = torch.einsum("nsk,nk->ns", spec.clamp_min(0), lo) + torch.einsum("nsk,nk->ns", spec.clamp_max(0), hi)
    assert (lower >= naive - 1e-5).all() and (lower > naive + 1e-4).any()


def test_eps_zero_gives_the_clean_margins():
    model, x = build("cnn", 3, True, 3)
    spec = margin_spec(torch.zeros(4, dtype=torch.long), 5)
    lower, upper = ibp_bounds(model, x, 0.0, "linf", spec)
    torch.testing.assert_close(lower, spec_values(model, x, spec), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(upper, lower, atol=1e-5, rtol=0)


def test_l2_is_tighter_than_its_enclosing_box():
    model, x = build("mlp", 2, False, 4)
    spec = margin_spec(torch.zeros(4, dtype=torch.long), 5)
    l2, _ = ibp_bounds(model, x, 0.3, "l2", spec)
    box, _ = ibp_bounds(model, x, 0.3, "linf", spec)
    assert (l2 >= box - 1e-5).all() and (l2 > box + 1e-3).any()


def test_train_mode_bn_uses_the_clean_batch_statistics():
    """Train-mode bounds equal eval-mode bounds with running stats set to the clean batch's."""
    model, x = build("cnn", 3, True, 5)
    spec = margin_spec(torch.zeros(4, dtype=torch.long), 5)
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    stats = {}

    def grab(m, inp, out):
        t = inp[0]
        dims = [0] + list(range(2, t.dim()))
        stats[m] = (t.mean(dims).detach(), t.var(dims, unbiased=False).detach())

    hooks = [m.register_forward_hook(grab) for m in bns]
    model.train()
    before = [m.running_mean.clone() for m in bns]
    lower_train, _ = ibp_bounds(model, x, 0.02, "linf", spec)
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, bns)), "IBP must not update running stats"
    with torch.no_grad():
        model(x)  # the clean forward pass the hooks read (it also updates running stats; reset below)
    for h in hooks:
        h.remove()
    for m in bns:
        m.running_mean.copy_(stats[m][0])
        m.running_var.copy_(stats[m][1] - m.eps + m.eps)
    model.eval()
    lower_eval, _ = ibp_bounds(model, x, 0.02, "linf", spec)
    torch.testing.assert_close(lower_train, lower_eval, atol=1e-4, rtol=1e-4)


def test_bounds_are_differentiable_and_layers_are_exposed():
    model, x = build("cnn-res", 3, True, 6)
    model.train()
    res = ibp_bounds(model, x, 0.02, "linf", margin_spec(torch.zeros(4, dtype=torch.long), 5), return_layers=True)
    assert len(res.pre_relu) == len(res.pre_relu_names) == 4  # 2 convs + residual body + fc
    assert all((b.radius >= 0).all() for b in res.pre_relu)
    assert torch.allclose(res.input.lower, (x - 0.02).clamp(0, 1))
    loss = -res.lower.mean() + sum(b.radius.mean() for b in res.pre_relu)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_per_point_eps_and_verified():
    model, x = build("mlp", 2, False, 7)
    spec = margin_spec(model(x).argmax(1), 5)
    eps = torch.tensor([0.0, 0.0, 0.5, 0.5])
    lower, _ = ibp_bounds(model, x, eps, "linf", spec)
    v = verified(lower)
    assert v[:2].all() and not v[2:].any()


@pytest.mark.parametrize(
    "layer,word", [(nn.PReLU(), "PReLU"), (nn.Softmax(dim=1), "Softmax"), (nn.LSTM(4, 4), "LSTM")]
)
def test_unsupported_layer_names_itself_and_an_alternative(layer, word):
    model = Normalized(nn.Sequential(nn.Conv2d(1, 4, 3), layer, nn.Flatten(), nn.Linear(4, 2)), [0.5], [0.5])
    with pytest.raises(UnsupportedLayer) as e:
        ibp_bounds(model, torch.rand(2, 1, 8, 8), 0.1)
    msg = str(e.value)
    assert "'model.1'" in msg and word in msg and ("crown" in msg or "replace it" in msg) and "\n" not in msg


def test_residual_module_and_inputs_outside_the_box():
    r = Residual(nn.Linear(3, 3))
    x = torch.rand(2, 3)
    torch.testing.assert_close(r(x), r.body(x) + x)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ibp_bounds(nn.Sequential(nn.Linear(3, 2)), x + 2, 0.1)


@pytest.mark.parametrize("layer", [nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.Mish(), nn.Hardswish(),
                                   nn.Tanhshrink(), nn.LeakyReLU(-0.2), nn.ELU(-0.5)])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_ibp_through_non_monotone_activations_contains_sampled_outputs(layer, norm):
    """[min f, max f] over each interval (certify/activation_lines.py): sampled inputs of the ball
    never leave the output bounds, and the bounds are finite and not vacuous."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), layer, nn.Flatten(), nn.Linear(144, 16), layer, nn.Linear(16, 3)).eval()
    x = torch.rand(3, 1, 8, 8)
    eps = 0.05 if norm == "linf" else 0.3
    lower, upper = ibp_bounds(model, x, eps, norm)
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        d = torch.randn(x.shape, generator=g)
        d = d.sign() * eps if norm == "linf" else d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * eps
        with torch.no_grad():
            y = model((x + d).clamp(0, 1))
        assert bool((y >= lower - 1e-5).all() and (y <= upper + 1e-5).all())
    assert bool(torch.isfinite(lower).all()) and float((upper - lower).max()) < 100


def test_ibp_training_through_a_non_monotone_activation_is_refused():
    from robustcli.certify.training import recipe_config, train_ibp

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.GELU(), nn.Linear(8, 3))
    with pytest.raises(UnsupportedLayer, match="'2' \\(GELU\\) is not monotone"):
        train_ibp(model, torch.rand(8, 1, 8, 8), torch.arange(8) % 3, recipe_config("vanilla", 0.1, 1))
