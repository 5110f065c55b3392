"""PReLU and abs certify: the graph front end writes them with a ReLU (prelu(x) = relu(x) +
a min(x, 0), |x| = relu(x) - min(x, 0)), so every bound method bounds them and branch and bound
splits them. Bounds are checked against sampled, corner and PGD points inside the set; ONNX PRelu
with a constant slope (per channel, shared, per element as Keras writes it) equals onnxruntime bit
for bit and bounds as the torch module does."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from certify_nets import sound_ball_lows, sound_box_lows
from robustcli.certify.bounders import InputSet, build_bounder
from robustcli.certify.spec import margin_spec

METHODS = ("ibp", "crown", "alpha-crown")


class Abs(nn.Module):
    def forward(self, x):
        return torch.abs(x)


def _slopes(model: nn.Module, low: float, high: float, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.PReLU):
                m.weight.copy_(low + (high - low) * torch.rand(m.weight.shape, generator=g))
    return model.eval()


def _mlp(act: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), act, nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 5))


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.PReLU(3), nn.Conv2d(3, 4, 3, stride=2), nn.PReLU(), nn.Flatten(),
                         nn.Linear(16, 5))


MODELS = {
    "prelu per unit, slopes in [-0.5, 1.5]": lambda s: _slopes(_mlp(nn.PReLU(12), s), -0.5, 1.5, s),
    "prelu shared": lambda s: _slopes(_mlp(nn.PReLU(), s), 0.0, 1.0, s),
    "abs": lambda s: _mlp(Abs(), s).eval(),
    "cnn prelu per channel": lambda s: _slopes(_cnn(s), -0.3, 1.2, s),
}


def _inputs(name: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, 1, 7, 7, generator=g) if name.startswith("cnn") else torch.rand(3, 1, 4, 4, generator=g)


@pytest.mark.parametrize("norm,eps", [("linf", 0.08), ("l2", 0.3)])
@pytest.mark.parametrize("name", list(MODELS))
def test_bounds_hold_inside_the_ball_and_tighten(name, norm, eps):
    model = MODELS[name](0)
    x = _inputs(name, 0)
    with torch.no_grad():
        spec = margin_spec(model(x).argmax(1), 5)
    lows = sound_ball_lows(model, x, spec, eps, norm, METHODS)
    assert bool((lows["alpha-crown"] >= lows["crown"] - 1e-6).all())
    assert bool((lows["crown"] > -1e30).all())


@pytest.mark.parametrize("name", list(MODELS))
def test_bounds_hold_over_boxes_for_random_rows(name):
    sound_box_lows(MODELS[name](1), _inputs(name, 1), 0.2, METHODS)


def test_prelu_ibp_is_exact_as_leaky_relu_for_slopes_in_0_1():
    """For 0 <= a <= 1 the two intervals of relu(x) + a min(x, 0) add up to PReLU's exact range,
    so IBP through the rewrite equals IBP through the same slope as a LeakyReLU."""
    prelu = _mlp(nn.PReLU(init=0.2), 3).eval()
    leaky = _mlp(nn.LeakyReLU(0.2), 3).eval()
    leaky.load_state_dict({k: v for k, v in prelu.state_dict().items() if "2." not in k})
    x = _inputs("mlp", 3)
    spec = margin_spec(torch.tensor([0, 1, 2]), 5)
    s = InputSet.ball(x, 0.05, "linf")
    a = build_bounder("ibp", prelu, x[:2]).lower(s, spec)
    b = build_bounder("ibp", leaky, x[:2]).lower(s, spec)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def _grid_property(act: str, seed: int):
    """A 2-input PReLU or abs network and the grid minimum (801 x 801 over [-1, 1]^2) of y0 - y1,
    with its spread."""
    torch.manual_seed(seed)
    layer = (lambda: Abs()) if act == "abs" else (lambda: nn.PReLU(16))
    model = _slopes(nn.Sequential(nn.Linear(2, 16), layer(), nn.Linear(16, 16), layer(), nn.Linear(16, 3)),
                    -0.3, 0.8, seed).double()
    g = torch.linspace(-1, 1, 801, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        out = model(pts)
    margin = out[:, 0] - out[:, 1]
    return model, float(margin.min()), float(margin.max() - margin.min())


VNNLIB_BOX = "".join(f"(declare-const X_{i} Real)\n" for i in range(2)) + "".join(
    f"(declare-const Y_{i} Real)\n" for i in range(3)) + "".join(
    f"(assert (>= X_{i} -1))\n(assert (<= X_{i} 1))\n" for i in range(2))


@pytest.mark.parametrize("split", ["input", "relu"])
@pytest.mark.parametrize("act", ["prelu", "abs"])
def test_branch_and_bound_decides_prelu_and_abs_networks_against_the_grid(act, split):
    """Y_0 - Y_1 >= t over the box: proved with t 3% of the margin's spread below the grid minimum,
    a counterexample the model confirms with t 3% above it; branch and bound splitting the input box
    or the ReLUs of the rewrite (which fixes the kink for both terms)."""
    from robustcli.certify.spec_verify import verify_property
    from robustcli.certify.vnnlib import parse_vnnlib

    model, low, spread = _grid_property(act, 0)
    for offset, want in ((0.03, "holds"), (-0.03, "violated")):
        t = low - offset * spread
        prop = parse_vnnlib(VNNLIB_BOX + f"(assert (<= (- Y_0 Y_1) {t!r}))\n")
        r = verify_property(copy.deepcopy(model).float(), prop, (2,), timeout=60, bab_split=split)
        assert r.status == want, (act, split, t, r.stages)
        if want == "violated":
            x = torch.as_tensor(r.counterexample).double().reshape(1, 2)
            assert bool((x.abs() <= 1).all())
            with torch.no_grad():
                y = model(x)[0]
            assert float(y[0] - y[1]) <= t + 1e-5


# -- ONNX -----------------------------------------------------------------------------------------

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from vnncomp_lookalikes import ort_outputs, save_graph, t  # noqa: E402
from onnx import helper  # noqa: E402

from robustcli.certify.onnx_import import onnx_to_torch  # noqa: E402
from robustcli.certify.onnx_layers import PReLU  # noqa: E402


def _prelu_file(path, slope: np.ndarray, seed: int):
    """Flat 6 inputs -> Gemm 8 -> PRelu(slope) -> Gemm 3."""
    rng = np.random.default_rng(seed)
    w1, b1 = rng.standard_normal((8, 6)).astype(np.float32), rng.standard_normal(8).astype(np.float32) * 0.3
    w2, b2 = rng.standard_normal((3, 8)).astype(np.float32), rng.standard_normal(3).astype(np.float32) * 0.3
    nodes = [helper.make_node("Gemm", ["input", "w1", "b1"], ["h"], transB=1),
             helper.make_node("PRelu", ["h", "s"], ["p"]),
             helper.make_node("Gemm", ["p", "w2", "b2"], ["output"], transB=1)]
    inits = [t("w1", w1), t("b1", b1), t("w2", w2), t("b2", b2), t("s", slope.astype(np.float32))]
    return save_graph(path, nodes, inits, [1, 6], [1, 3])


@pytest.mark.parametrize("slope", [np.array([0.25]), np.linspace(-0.4, 1.3, 8), np.linspace(0.0, 0.9, 8)[None]],
                         ids=["shared", "per unit", "per element with batch axis"])
def test_onnx_prelu_equals_onnxruntime_and_certifies(tmp_path, slope):
    path = _prelu_file(tmp_path / "p.onnx", slope, 0)
    conv = onnx_to_torch(path)
    assert any(isinstance(m, PReLU) for m in conv.module.modules())
    x = torch.rand(40, 6, generator=torch.Generator().manual_seed(0)) * 4 - 2
    with torch.no_grad():
        ours = conv.module(x).numpy()
    np.testing.assert_allclose(ours, ort_outputs(path, x.numpy()), rtol=1e-5, atol=1e-5)
    alone = save_graph(tmp_path / "alone.onnx", [helper.make_node("PRelu", ["input", "s"], ["output"])],
                       [t("s", slope.astype(np.float32))], [1, 8], [1, 8])
    z = torch.randn(40, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert np.array_equal(onnx_to_torch(alone).module(z).numpy(), ort_outputs(alone, z.numpy()))  # bit for bit
    xs = torch.rand(3, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        spec = margin_spec(conv.module(xs).argmax(1), 3)
    sound_box_lows(conv.module, xs, 0.3, METHODS)
    lows = {m: build_bounder(m, conv.module, xs[:2]).lower(InputSet.ball(xs, 0.05, "linf"), spec) for m in METHODS}
    assert all(bool(torch.isfinite(v).all()) for v in lows.values())


def test_onnx_prelu_export_bounds_as_the_torch_module(tmp_path):
    model = _slopes(nn.Sequential(nn.Linear(6, 8), nn.PReLU(8), nn.Linear(8, 3)), -0.2, 0.8, 4)
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(2))
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17)
    conv = onnx_to_torch(path)
    spec = margin_spec(torch.tensor([0, 1, 2]), 3)
    s = InputSet.ball(x, 0.05, "linf")
    for m in METHODS:
        a = build_bounder(m, conv.module, x[:2], alpha_iterations=5).lower(s, spec)
        b = build_bounder(m, model, x[:2], alpha_iterations=5).lower(s, spec)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
