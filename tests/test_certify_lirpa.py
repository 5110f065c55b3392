"""auto_LiRPA through the compatibility shim: same IBP as native, sound CROWN family."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustcli.certify import ibp_bounds, margin_spec
from robustcli.certify import lirpa_compat
from robustcli.certify.lirpa import LirpaBounder, lirpa_available, lirpa_friendly
from certify_nets import pgd_min_spec, random_cnn, random_mlp

pytestmark = pytest.mark.skipif(not lirpa_available(), reason="auto_LiRPA not installed")

NETS = [
    ("mlp", 2, False), ("mlp", 3, True), ("mlp", 4, False), ("cnn", 2, False), ("cnn", 3, True), ("cnn-res", 2, True),
]  # fmt: skip


def build(kind, depth, bn, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "mlp":
        return random_mlp(depth, bn, seed), torch.rand(5, 1, 4, 4, generator=g)
    x = torch.rand(5, 1, 8, 8, generator=g)
    x[:2] = (x[:2] > 0.5).float()
    return random_cnn(depth, bn, seed, residual=kind == "cnn-res"), x


@pytest.mark.parametrize("kind,depth,bn", NETS)
def test_native_ibp_equals_auto_lirpa_ibp_linf(kind, depth, bn):
    model, x = build(kind, depth, bn, 7 * depth + bn)
    spec = margin_spec(model(x).argmax(1), 5)
    lower, upper = ibp_bounds(model, x, 0.02, "linf", spec)
    l2, u2 = LirpaBounder(model, x, "lirpa-ibp").bounds(x, 0.02, "linf", spec)
    torch.testing.assert_close(lower, l2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(upper, u2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,depth,bn", NETS)
def test_native_ibp_l2_equals_auto_lirpa_on_mlps_and_is_never_looser(kind, depth, bn):
    """auto_LiRPA handles the L2 ball only at a first Linear layer (and ignores [0, 1] and conv padding).

    So on raw MLPs with interior points the two must agree; elsewhere native may only be tighter.
    """
    model, x = build(kind, depth, bn, 11 * depth + bn)
    x = 0.3 + 0.4 * x
    raw = model.model  # without the normalisation wrapper: the first layer is Flatten + Linear for MLPs
    spec = margin_spec(raw(x).argmax(1), 5)
    for net in (raw, model):
        lower, upper = ibp_bounds(net, x, 0.1, "l2", spec)
        l2, u2 = LirpaBounder(net, x, "lirpa-ibp").bounds(x, 0.1, "l2", spec)
        if kind == "mlp" and net is raw:
            torch.testing.assert_close(lower, l2, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(upper, u2, atol=1e-5, rtol=1e-5)
        assert (lower >= l2 - 1e-5).all() and (upper <= u2 + 1e-5).all()


def check_crown_family(kind, depth, bn, norm, eps, methods):
    model, x = build(kind, depth, bn, 13 * depth + bn)
    x = x[:3]
    spec = margin_spec(model(x).argmax(1), 5)
    pgd = pgd_min_spec(model, x, spec, eps, norm, steps=30, g=torch.Generator().manual_seed(0))
    lowers = {}
    for method in methods:
        bounder = LirpaBounder(model, x, method, alpha_iterations=5)
        lowers[method], _ = bounder.bounds(x, eps, norm, spec, bound_upper=False)
        assert (lowers[method] <= pgd + 1e-5 + 1e-5 * pgd.abs()).all(), f"{method} bound above a PGD margin"
    if "alpha-crown" in lowers:
        # alpha-CROWN starts from CROWN's relaxation and keeps the best bound it sees.
        assert (lowers["alpha-crown"] >= lowers["crown"] - 1e-4).all()


@pytest.mark.parametrize(
    "kind,depth,bn,norm,eps,methods",
    [
        ("mlp", 3, True, "linf", 0.03, ("crown-ibp", "crown", "alpha-crown")),
        ("mlp", 3, False, "l2", 0.3, ("crown-ibp", "crown", "alpha-crown")),
        ("cnn", 3, True, "linf", 0.03, ("crown-ibp", "crown")),
        ("cnn-res", 2, False, "l2", 0.3, ("crown-ibp", "crown")),
    ],
)
def test_crown_family_is_sound(kind, depth, bn, norm, eps, methods):
    check_crown_family(kind, depth, bn, norm, eps, methods)


@pytest.mark.slow
@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.3)])
@pytest.mark.parametrize("kind,depth,bn", NETS)
def test_crown_family_is_sound_everywhere(kind, depth, bn, norm, eps):
    check_crown_family(kind, depth, bn, norm, eps, ("crown-ibp", "crown", "alpha-crown"))


def test_lirpa_friendly_rewrite_computes_the_same_function_and_leaves_the_model_alone():
    model, x = build("cnn-res", 2, True, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    friendly = lirpa_friendly(model, x)
    torch.testing.assert_close(friendly(x), model(x), atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, nn.AvgPool2d) for m in friendly.modules())
    LirpaBounder(model, x, "crown").bounds(x, 0.01, "linf", margin_spec(torch.zeros(5, dtype=torch.long), 5))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "auto_LiRPA changed the model"
    assert not model.training


def test_compat_shim_does_nothing_for_a_newer_auto_lirpa(monkeypatch):
    monkeypatch.setattr(lirpa_compat, "installed_version", lambda: "0.6.0")
    for name in ("_numpy_arraysetops", "_onnx_opset_setter", "_node_getitem", "_named_members_keyword"):
        monkeypatch.setattr(lirpa_compat, name, lambda *a: pytest.fail(f"{name} applied to a newer auto_LiRPA"))
    assert lirpa_compat.import_auto_lirpa().__name__ == "auto_LiRPA"


def test_compat_shim_patches_named_members():
    al = lirpa_compat.import_auto_lirpa()
    assert getattr(al.BoundedModule._named_members, "_robustcli_patched", False)
    bm = al.BoundedModule(nn.Sequential(nn.Linear(3, 2)), torch.zeros(1, 3))
    assert len(list(bm.named_parameters())) == 2  # torch 2 passes remove_duplicate here
