"""Concatenation of branches (torch.cat, `robustcli.core.nn.Concat`): traced into the canonical
tree, bounded soundly by native IBP (Linf and L2 balls, boxes) and by the CROWN family (native,
certify/dag_bounds.py; and through auto_LiRPA's BoundConcat), the same bounds from a module, .pt2, TorchScript and ONNX, certified at
the CLI, differentiable for certified training; a cat the engines cannot bound is refused in one
line naming aten.cat and its node."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from certify_nets import (
    concat_digits_cnn,
    concat_digits_sequential,
    empirical_min,
    model_formats,
    spec_values,
)
from cli_helpers import only_error_line
from robustcli.certify.bounders import InputSet, build_bounder, walkable
from robustcli.certify.graph import UnsupportedLayer
from robustcli.certify.ibp import ibp_bounds
from robustcli.certify.lirpa import lirpa_available
from robustcli.certify.spec import margin_spec
from robustcli.certify.trace import UnsupportedOperation, canonical_model
from robustcli.core.nn import Concat, Normalized

CROWN = pytest.mark.skipif(not lirpa_available(), reason="auto_LiRPA not installed")




def test_cat_is_traced_into_concat_modules_computing_the_same_function():
    model = concat_digits_cnn().eval()
    x = torch.rand(5, 1, 8, 8)
    canon = canonical_model(model, x[:2])
    concats = [m for m in canon.modules() if isinstance(m, Concat)]
    assert [(len(m.branches), m.dim) for m in concats] == [(2, 1), (3, 1), (2, 1)]
    assert isinstance(concats[0].branches[0], nn.Identity)  # DenseNet reuse: the input itself is a branch
    torch.testing.assert_close(canon(x), model(x), atol=1e-5, rtol=1e-5)


def _branches_after_a_stem() -> nn.Module:
    """Concatenations of computed values only (no part is the input itself): auto_LiRPA 0.3 bounds
    these under L2 balls too."""
    torch.manual_seed(6)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(),
        Concat([nn.Identity(), nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU())]),
        Concat([nn.Sequential(nn.Conv2d(5, 2, 1), nn.ReLU()), nn.AvgPool2d(3, 1, 1)]),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(7 * 16, 12), nn.ReLU(),
        Concat([nn.Identity(), nn.Linear(12, 4)]), nn.Linear(16, 10),
    ).eval()  # fmt: skip


SOUNDNESS = [("ibp", "linf", concat_digits_cnn), ("ibp", "l2", concat_digits_cnn), ("ibp", "l2", _branches_after_a_stem),
             ("crown", "linf", concat_digits_cnn), ("crown", "l2", _branches_after_a_stem),
             ("alpha-crown", "linf", _branches_after_a_stem)]  # native (certify/dag_bounds.py): no auto_LiRPA needed


@pytest.mark.parametrize("method,norm,net", SOUNDNESS)
def test_bounds_through_concatenation_are_sound_on_balls(method, norm, net):
    model = net().eval()
    eps = 0.03 if norm == "linf" else 0.3
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    spec = margin_spec(model(x).argmax(1), 10)
    low = build_bounder(method, model, x[:2], norm=norm, alpha_iterations=5).lower(InputSet.ball(x, eps, norm), spec)
    empirical = empirical_min(model, x, spec, eps, norm)
    assert bool((low <= empirical + 1e-5 + 1e-5 * empirical.abs()).all()), f"{method} {norm}: bound above a point"
    assert bool((low > -1e3).all())  # finite and not vacuous at this size


def test_ibp_through_concatenation_is_sound_on_boxes():
    model = concat_digits_cnn().eval()
    g = torch.Generator().manual_seed(3)
    centre = torch.rand(3, 1, 8, 8, generator=g)
    lower, upper = (centre - 0.02 * torch.rand(centre.shape, generator=g)), centre + 0.03
    spec = margin_spec(model(centre).argmax(1), 10)
    low = build_bounder("ibp", model, centre[:2]).lower(InputSet.box(lower, upper), spec)
    points = lower + (upper - lower) * torch.rand(200, *centre.shape, generator=g)
    assert bool((low <= torch.stack([spec_values(model, p, spec) for p in points]).min(0).values + 1e-5).all())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_concatenated_branches_bound_exactly_as_the_stacked_layer(norm):
    """cat([relu(A x + a), relu(B x + b)]) is relu([A; B] x + [a; b]): IBP must give the same bounds,
    in L2 too (each branch meets the ball at its own first affine layer)."""
    torch.manual_seed(4)
    lin_a, lin_b, head = nn.Linear(16, 5), nn.Linear(16, 7), nn.Linear(12, 4)
    stacked = nn.Linear(16, 12)
    stacked.weight.data = torch.cat([lin_a.weight, lin_b.weight]).detach().clone()
    stacked.bias.data = torch.cat([lin_a.bias, lin_b.bias]).detach().clone()
    branched = nn.Sequential(nn.Flatten(), Concat([nn.Sequential(lin_a, nn.ReLU()), nn.Sequential(lin_b, nn.ReLU())]), head)
    plain = nn.Sequential(nn.Flatten(), stacked, nn.ReLU(), head)
    x = torch.rand(3, 1, 4, 4)
    torch.testing.assert_close(branched(x), plain(x))
    spec = margin_spec(plain(x).argmax(1), 4)
    for got, want in zip(ibp_bounds(branched, x, 0.2, norm, spec), ibp_bounds(plain, x, 0.2, norm, spec)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.fixture(scope="module")
def saved_forms(tmp_path_factory):
    """The CNN with normalisation in front (a `Normalized` wrapper, so the graph forms carry it as
    constants) as a module, .pt2, TorchScript and ONNX; saved once for the tests below."""
    model = Normalized(concat_digits_cnn(), [0.4], [0.3]).eval()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    return model, x, model_formats(tmp_path_factory.mktemp("forms"), model, x)


@pytest.mark.parametrize("method", ["ibp", pytest.param("crown", marks=CROWN), pytest.param("lirpa-crown", marks=CROWN)])
def test_every_format_gives_the_same_bounds(saved_forms, method):
    model, x, forms = saved_forms
    spec = margin_spec(model(x).argmax(1), 10)
    s = InputSet.ball(x, 0.02, "linf")
    lows = {name: build_bounder(method, m, x[:2]).lower(s, spec) for name, m in forms.items()}
    for name, low in lows.items():
        torch.testing.assert_close(low, lows["module"], atol=1e-5, rtol=1e-5, msg=f"{name} differs from the module")


def test_certified_training_differentiates_through_concat_with_batch_statistics():
    model = concat_digits_sequential().train()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    lower, _ = ibp_bounds(model, x, 0.05, "linf", margin_spec(y, 10))
    lower.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient reaches {missing}"


def test_train_ibp_trains_a_concat_model_at_the_cli(tmp_path, run_cli):
    r = run_cli("train-ibp", "--data", "digits", "--arch", "certify_nets:concat_digits_sequential", "--recipe",
                "vanilla", "--eps", "0.05", "--epochs", "1", "--batch-size", "64", "--n-train", "256", "--holdout",
                "32", "--n", "16", "--pgd-steps", "2", "--start", "1", "--warmup", "1",
                "--out", tmp_path / "m.safetensors")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.safetensors").exists()


def test_cli_certifies_a_concat_model_from_a_pt2_file(tmp_path, run_cli):
    model = concat_digits_cnn().eval()
    x = torch.rand(2, 1, 8, 8)
    batch = torch.export.Dim("batch", min=2)
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}}), str(tmp_path / "m.pt2"))
    methods = ["ibp", "crown"] if lirpa_available() else ["ibp"]
    out = tmp_path / "r.json"
    r = run_cli("certify", "--model", tmp_path / "m.pt2", "--data", "digits", "--n", "8", "--eps", "0.01",
                "--method", *methods, "--pgd-steps", "2", "--json", out)
    assert r.exit_code == 0, r.output
    rows = {row["method"]: row for row in json.loads(out.read_text())["results"]}
    assert set(rows) == set(methods)
    for row in rows.values():
        assert 0.0 <= row["verified_accuracy"] <= row["pgd_accuracy"] <= row["clean_accuracy"]
    if "crown" in rows:  # CROWN is never looser than IBP on average here
        assert rows["crown"]["mean_margin_lower_bound"] >= rows["ibp"]["mean_margin_lower_bound"] - 1e-4


@CROWN
def test_native_ibp_equals_auto_lirpa_ibp_through_concatenation():
    """Two implementations of the same interval arithmetic (last layer merged with C in both)."""
    model = concat_digits_cnn().eval()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(8))
    spec = margin_spec(model(x).argmax(1), 10)
    s = InputSet.ball(x, 0.02, "linf")
    native = build_bounder("ibp", model, x[:2]).lower(s, spec)
    lirpa = build_bounder("lirpa-ibp", model, x[:2]).lower(s, spec)
    torch.testing.assert_close(native, lirpa, atol=1e-4, rtol=1e-4)


@CROWN
@pytest.mark.parametrize("method", ["lirpa-crown-ibp"])
def test_crown_under_l2_refuses_a_cat_of_the_input_itself_naming_it(method):
    """auto_LiRPA 0.3's BoundConcat cannot join the L2 ball itself with computed values (measured):
    refused when the bounder is built, naming the node and only native IBP, which bounds it. (The
    native CROWN family bounds this graph itself: certify/dag_bounds.py.)"""
    model = concat_digits_cnn().eval()
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(UnsupportedLayer) as e:
        build_bounder(method, model, x, norm="l2")
    msg = str(e.value)
    assert msg.startswith(f"{method} bounds this graph through auto_LiRPA 0.3")
    assert "aten.cat (node 'cat')" in msg and "L2" in msg and msg.endswith("use --method ibp") and "\n" not in msg
    build_bounder(method, model, x, norm="linf")  # Linf balls are bounded


@pytest.mark.parametrize("method", ["crown", "crown-ibp", "alpha-crown"])
def test_native_crown_under_l2_bounds_a_cat_of_the_input_itself(method):
    model = concat_digits_cnn().eval()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(12))
    spec = margin_spec(model(x).argmax(1), 10)
    low = build_bounder(method, model, x[:2], norm="l2", alpha_iterations=4).lower(InputSet.ball(x, 0.3, "l2"), spec)
    empirical = empirical_min(model, x, spec, 0.3, "l2")
    assert bool((low <= empirical + 1e-5 + 1e-5 * empirical.abs()).all()) and bool(torch.isfinite(low).all())


class _CatOnBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        h = x.flatten(1)
        return self.fc(torch.cat([h, h * 0.5], 0))[: x.shape[0]]


class _CatWithConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 6), nn.Linear(8, 10)
        self.register_buffer("extra", torch.ones(1, 2))

    def forward(self, x):
        h = self.fc1(x.flatten(1))
        return self.fc2(torch.cat([h, self.extra.expand(x.shape[0], 2)], 1))


@pytest.mark.parametrize("net,what", [(_CatOnBatch, "batch dimension"), (_CatWithConstant, "constant tensor")])
@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_unsupported_cat_is_refused_in_one_line_naming_the_node(net, what, method):
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(UnsupportedOperation) as e:
        build_bounder(method, net().eval(), x)
    msg = str(e.value)
    assert "aten.cat (node 'cat" in msg and what in msg and "\n" not in msg
    # never a pointer to a method that fails too: auto_LiRPA is named only where it bounds the model
    assert "--method" not in msg.replace("--method lirpa-crown (auto_LiRPA) bounds it", "")
    if "--method lirpa-crown" in msg:
        spec = torch.eye(10)[None].expand(2, 10, 10)
        assert bool(torch.isfinite(build_bounder("lirpa-crown", net().eval(), x).lower(InputSet.ball(x, 0.01, "linf"), spec)).all())


def test_cli_refuses_an_unsupported_cat_in_one_line(tmp_path, run_cli):
    model, x = _CatOnBatch().eval(), torch.rand(2, 1, 8, 8)
    batch = torch.export.Dim("batch", min=2)
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}}), str(tmp_path / "m.pt2"))
    torch.jit.save(torch.jit.trace(model, x), str(tmp_path / "m.pt"))
    for name in ("m.pt2", "m.pt"):
        out = tmp_path / "r.json"
        line = only_error_line(run_cli("certify", "--model", tmp_path / name, "--data", "digits", "--n", "4",
                                       "--eps", "0.01", "--method", "ibp", "crown", "--json", out))
        assert "aten.cat (node 'cat')" in line and "batch dimension" in line and not out.exists(), name
        assert "--method" not in line


@CROWN
def test_cli_refuses_crown_under_l2_on_a_cat_of_the_input_in_one_line(tmp_path, run_cli):
    model, x = concat_digits_cnn().eval(), torch.rand(2, 1, 8, 8)
    batch = torch.export.Dim("batch", min=2)
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}}), str(tmp_path / "m.pt2"))
    out = tmp_path / "r.json"
    line = only_error_line(run_cli("certify", "--model", tmp_path / "m.pt2", "--data", "digits", "--n", "4",
                                   "--norm", "l2", "--eps", "0.1", "--method", "ibp", "lirpa-crown-ibp", "--json", out))
    assert "aten.cat (node 'cat')" in line and line.endswith("use --method ibp") and not out.exists()
    r = run_cli("certify", "--model", tmp_path / "m.pt2", "--data", "digits", "--n", "4", "--norm", "l2", "--eps",
                "0.1", "--method", "ibp", "crown-ibp", "--pgd-steps", "2", "--json", out)  # native: bounded
    assert r.exit_code == 0, r.output


def test_walkable_keeps_a_module_built_from_concat():
    model = concat_digits_sequential().eval()
    assert walkable(model, torch.rand(2, 1, 8, 8)) is model  # no tracing needed: the tree is walked directly


@CROWN
def test_auto_lirpa_forms_of_graph_normalisation_compute_the_same_function():
    """The per-channel normalisation a graph carries as constants becomes a depthwise convolution for
    auto_LiRPA (its patches mode asserts on products with constants); the function is unchanged."""
    from robustcli.certify.lirpa import lirpa_friendly

    model = Normalized(concat_digits_cnn(), [0.4], [0.3]).eval()
    x = torch.rand(3, 1, 8, 8)
    tree = walkable(model, x[:2])
    friendly = lirpa_friendly(tree, x[:2])
    assert any(isinstance(m, nn.Conv2d) and m.groups == 1 and m.kernel_size == (1, 1) for m in friendly.modules())
    torch.testing.assert_close(friendly(x), model(x), atol=1e-5, rtol=1e-5)


@CROWN
def test_alpha_crown_through_auto_lirpa_bounds_under_no_grad():
    """Dataset certification bounds under torch.no_grad; alpha-CROWN still optimises its slopes."""
    model = _branches_after_a_stem()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    spec = margin_spec(model(x).argmax(1), 10)
    s = InputSet.ball(x, 0.03, "linf")
    with torch.no_grad():
        alpha = build_bounder("alpha-crown", model, x[:2], alpha_iterations=3).lower(s, spec)
        crown = build_bounder("crown", model, x[:2]).lower(s, spec)
    assert bool((alpha >= crown - 1e-5).all())
    assert bool((alpha <= empirical_min(model, x, spec, 0.03, "linf") + 1e-5).all())
