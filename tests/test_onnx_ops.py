"""ONNX operators for attacks (forward and backward passes): each converts to a module equal to
onnxruntime on random inputs (to 1e-5) with finite, non-zero input gradients, at the opsets where
its attributes changed; SiLU as exporters write it is one SiLU layer that native CROWN bounds;
operators still outside the set are refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from onnx_helpers import helper, tensor
from onnx import TensorProto  # noqa: E402 - after onnx_helpers, which skips these tests without onnx

ort = pytest.importorskip("onnxruntime")

from robustcli.certify.onnx_import import onnx_to_torch  # noqa: E402
from robustcli.errors import InputError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def build(path, nodes, inits, in_shape, opset: int, out_shape=None):
    """A one-input graph; the output's shape is `out_shape` or else inferred by onnx."""
    import onnx

    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None if out_shape is None else list(out_shape))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                              [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 18 else 10
    if out_shape is None:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def check(path, n: int = 6, scale: float = 2.0, grad: bool = True):
    """The converted module equals onnxruntime point by point (the module runs the whole batch) and has
    finite input gradients that are not all zero."""
    conv = onnx_to_torch(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    xs = (scale * rng.standard_normal((n, *conv.input_shape))).astype(np.float32)
    ref = np.concatenate([session.run(None, {name: x[None]})[0] for x in xs])
    x = torch.from_numpy(xs).requires_grad_(True)
    out = conv.module(x)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-5, atol=1e-5)
    if grad:
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
        assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and bool((x.grad != 0).any())
    return conv


def exported(model: nn.Module, path, example_shape: tuple[int, ...], opset: int, x: torch.Tensor):
    """`model` written by torch's legacy (TorchScript) exporter at `opset`, converted and checked
    against onnxruntime (`check`), and equal to the module itself at the points x."""
    torch.onnx.export(model, torch.rand(*example_shape), str(path), dynamo=False, opset_version=opset)
    conv = check(path)
    with torch.no_grad():
        torch.testing.assert_close(conv.module(x), model(x), rtol=1e-5, atol=1e-5)
    return conv


def rand(*shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def node(op, ins, outs="y", **attrs):
    return helper.make_node(op, list(ins), [outs] if isinstance(outs, str) else list(outs), **attrs)


# (id, nodes, initializers, input shape, opset)
ELEMENTWISE_CASES = [
    ("abs", [node("Abs", ["x"])], [], (1, 5), 13),
    ("neg", [node("Neg", ["x"])], [], (1, 5), 13),
    ("exp", [node("Exp", ["x"])], [], (1, 5), 13),
    ("log", [node("Abs", ["x"], "a"), node("Add", ["a", "h"], "p"), node("Log", ["p"])], [tensor("h", np.float32(0.5))], (1, 5), 13),
    ("sqrt", [node("Abs", ["x"], "a"), node("Add", ["a", "h"], "p"), node("Sqrt", ["p"])], [tensor("h", np.float32(0.5))], (1, 5), 13),
    ("reciprocal", [node("Exp", ["x"], "e"), node("Reciprocal", ["e"])], [], (1, 5), 13),
    ("pow-const", [node("Pow", ["x", "e"])], [tensor("e", np.float32(3.0))], (1, 5), 13),
    ("pow-int-exponent", [node("Pow", ["x", "e"])], [tensor("e", np.array([2, 1, 2, 1, 2], np.int64))], (1, 5), 15),
    ("pow-computed", [node("Sigmoid", ["x"], "s"), node("Tanh", ["x"], "t"), node("Pow", ["s", "t"])], [], (1, 5), 13),
    ("max-min-3", [node("Relu", ["x"], "r"), node("Max", ["x", "r", "c"], "m"), node("Min", ["m", "x", "c2"])],
     [tensor("c", np.float32(-0.5)), tensor("c2", rand(5, seed=3))], (1, 5), 13),
    ("sum-mean", [node("Tanh", ["x"], "t"), node("Sum", ["x", "t", "c"], "s"), node("Mean", ["s", "x"])],
     [tensor("c", rand(1, 5, seed=4))], (1, 5), 13),
    ("div-by-exp", [node("Exp", ["x"], "e"), node("Div", ["x", "e"])], [], (1, 5), 13),
    ("const-div-by-softplus", [node("Softplus", ["x"], "s"), node("Div", ["c", "s"])], [tensor("c", rand(5, seed=5))], (1, 5), 13),
    ("add-widening-const", [node("Add", ["x", "c"])], [tensor("c", rand(3, 1, seed=6))], (1, 1, 4), 13),
    ("prelu", [node("PRelu", ["x", "s"])], [tensor("s", np.array([[[0.1]], [[0.3]]], np.float32))], (1, 2, 3, 3), 13),
    ("where-const-mask", [node("Where", ["m", "x", "c"])],
     [tensor("m", np.array([True, False, True, True, False])), tensor("c", np.float32(0.25))], (1, 5), 13),
    ("mish", [node("Mish", ["x"])], [], (1, 5), 18),
]


@pytest.mark.parametrize("case", ELEMENTWISE_CASES, ids=[c[0] for c in ELEMENTWISE_CASES])
def test_elementwise_operators_match_onnxruntime(tmp_path, case):
    name, nodes, inits, shape, opset = case
    check(build(tmp_path / f"{name}.onnx", nodes, inits, shape, opset))


REDUCTIONS = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceSumSquare", "ReduceLogSumExp"]


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("op", REDUCTIONS)
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reductions_take_axes_as_attribute_or_input_by_opset(tmp_path, op, opset, keepdims):
    """Axes are an attribute before opset 18 (before 13 for ReduceSum) and an input from then on."""
    as_input = opset >= 18 or op == "ReduceSum"
    axes = [1, -1]
    if as_input:
        nodes, inits = [node(op, ["x", "axes"], keepdims=keepdims)], [tensor("axes", np.array(axes, np.int64))]
    else:
        nodes, inits = [node(op, ["x"], axes=axes, keepdims=keepdims)], []
    check(build(tmp_path / "r.onnx", nodes, inits, (1, 3, 2, 4), opset), scale=0.7)


def test_reduction_over_the_batch_axis_is_refused_and_noop_with_empty_axes_is_the_identity(tmp_path):
    path = build(tmp_path / "all.onnx", [node("ReduceMean", ["x"], keepdims=1, name="avg")], [], (1, 4), 13)
    with pytest.raises(InputError, match=r"'avg' \(ReduceMean, node 0\).*batch axis"):
        onnx_to_torch(path)
    path = build(tmp_path / "noop.onnx", [node("ReduceSum", ["x", "axes"], noop_with_empty_axes=1)],
                 [tensor("axes", np.zeros(0, np.int64))], (1, 4), 13)
    check(path)


@pytest.mark.parametrize("axis,eps", [(-1, 1e-5), (-2, 1e-3), (1, 0.1)])
def test_layer_normalization_node(tmp_path, axis, eps):
    shape = (1, 3, 4)
    norm = shape[axis % 3:]
    nodes = [node("LayerNormalization", ["x", "s", "b"], axis=axis, epsilon=eps)]
    inits = [tensor("s", rand(*norm, seed=1)), tensor("b", rand(norm[-1], seed=2))]  # bias broadcasts
    conv = check(build(tmp_path / "ln.onnx", nodes, inits, shape, 17))
    assert isinstance(conv.module, nn.Sequential) and isinstance(conv.module[0], nn.LayerNorm)


@pytest.mark.parametrize("opset", [13, 17])
def test_exported_layernorm_mlp_both_as_node_and_decomposed(tmp_path, opset):
    """torch writes LayerNormalization from opset 17 and ReduceMean / Sub / Pow / Sqrt / Div before: the
    division by sqrt(variance + eps) is accepted (a divisor positive by construction)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 3)).eval()
    exported(model, tmp_path / "ln.onnx", (1, 12), opset, torch.randn(4, 12))


def test_instance_and_group_normalization_per_opset(tmp_path):
    """GroupNormalization's scale and bias are per group at opset 18, per channel at opset 21."""
    shape = (1, 4, 3, 3)
    check(build(tmp_path / "in.onnx", [node("InstanceNormalization", ["x", "s", "b"], epsilon=1e-3)],
                [tensor("s", rand(4, seed=1)), tensor("b", rand(4, seed=2))], shape, 13))
    check(build(tmp_path / "gn21.onnx", [node("GroupNormalization", ["x", "s", "b"], num_groups=2, epsilon=1e-4)],
                [tensor("s", rand(4, seed=1)), tensor("b", rand(4, seed=2))], shape, 21, out_shape=shape))
    # opset 18's per-group form: onnx's checker (and so `robust`'s reader) refuses files of this withdrawn
    # definition; a ModelProto given directly converts with each group's value over its channels.
    graph = helper.make_graph([node("GroupNormalization", ["x", "s", "b"], num_groups=2, epsilon=1e-4)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
                              initializer=[tensor("s", rand(2, seed=1)), tensor("b", rand(2, seed=2))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = torch.randn(3, *shape[1:])
    expected = nn.functional.group_norm(x, 2, torch.from_numpy(rand(2, seed=1)).repeat_interleave(2),
                                        torch.from_numpy(rand(2, seed=2)).repeat_interleave(2), 1e-4)
    torch.testing.assert_close(onnx_to_torch(model).module(x), expected)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_on_an_inner_axis_follows_the_opset(tmp_path, op, opset):
    """Before opset 13 Softmax(axis=1) normalises the axes from 1 on together; from 13 only axis 1."""
    check(build(tmp_path / "sm.onnx", [node(op, ["x"], axis=1)], [], (1, 2, 3, 4), opset))
    check(build(tmp_path / "sm2.onnx", [node(op, ["x"])], [], (1, 2, 3, 4), opset))  # default axis


class _Attention(nn.Module):
    """One head of self-attention over 4 tokens of 6 features, then a linear head on the mean token."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.head = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(1, 2) / 8 ** 0.5
        mixed = torch.softmax(scores, -1) @ self.v(x)
        return self.head(mixed.mean(1))


def test_attention_matmul_of_computed_tensors(tmp_path):
    torch.manual_seed(0)
    model = _Attention().eval()
    exported(model, tmp_path / "att.onnx", (1, 4, 6), 17, torch.randn(5, 4, 6))
    # a constant matrix on the left, and a product whose ranks would broadcast the batch axis (refused)
    check(build(tmp_path / "left.onnx", [node("MatMul", ["w", "x"])], [tensor("w", rand(3, 2, seed=1))], (1, 2, 4), 13))
    path = build(tmp_path / "bad.onnx", [node("Relu", ["x"], "r"), node("MatMul", ["x", "r"], name="mm")], [], (1, 4), 13,
                 out_shape=(1, 4))
    with pytest.raises(InputError, match=r"'mm' \(MatMul.*ranks 2 and 2"):
        onnx_to_torch(path)


def test_conv_transpose(tmp_path):
    nodes = [node("ConvTranspose", ["x", "w", "b"], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1], group=2)]
    inits = [tensor("w", rand(4, 3, 3, 3, seed=1)), tensor("b", rand(6, seed=2))]
    conv = check(build(tmp_path / "ct.onnx", nodes, inits, (1, 4, 5, 5), 13))
    assert conv.output_shape == (6, 10, 10)


@pytest.mark.parametrize("mode,align", [("nearest", None), ("bilinear", False), ("bilinear", True), ("bicubic", False)])
def test_exported_upsampling_is_resize(tmp_path, mode, align):
    up = nn.Upsample(scale_factor=2, mode=mode, align_corners=align)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), up, nn.Flatten(), nn.Linear(2 * 12 * 12, 3)).eval()
    path = tmp_path / "up.onnx"
    torch.onnx.export(model, torch.rand(1, 1, 8, 8), str(path), dynamo=False, opset_version=17)
    check(path)


def test_resize_with_sizes_and_half_pixel_nearest(tmp_path):
    nodes = [node("Resize", ["x", "", "", "sizes"], mode="linear", coordinate_transformation_mode="half_pixel")]
    check(build(tmp_path / "sz.onnx", nodes, [tensor("sizes", np.array([1, 2, 7, 3], np.int64))], (1, 2, 4, 5), 13))
    nodes = [node("Resize", ["x", "", "scales"], mode="nearest", coordinate_transformation_mode="half_pixel",
                  nearest_mode="round_prefer_ceil")]
    check(build(tmp_path / "ne.onnx", nodes, [tensor("scales", np.array([1, 1, 0.5, 3], np.float32))], (1, 2, 6, 3), 13))
    nodes = [node("Resize", ["x", "", "scales"], mode="nearest", name="rs")]  # half_pixel + round_prefer_floor
    path = build(tmp_path / "no.onnx", nodes, [tensor("scales", np.array([1, 1, 2, 2], np.float32))], (1, 2, 3, 3), 13)
    with pytest.raises(InputError, match=r"'rs' \(Resize.*round_prefer_floor"):
        onnx_to_torch(path)


SHAPE_CASES = [
    ("expand", [node("Expand", ["x", "s"])], [tensor("s", np.array([1, 3, 1, 4], np.int64))], (1, 1, 2, 1), 13),
    ("tile", [node("Tile", ["x", "r"])], [tensor("r", np.array([1, 2, 3], np.int64))], (1, 2, 2), 13),
    ("gather-2d-indices", [node("Gather", ["x", "i"], axis=2)], [tensor("i", np.array([[0, -1], [2, 2]], np.int64))], (1, 2, 3), 13),
    ("gather-scalar", [node("Gather", ["x", "i"], axis=1)], [tensor("i", np.array(1, np.int64))], (1, 3, 4), 13),
    ("constant-value-floats", [helper.make_node("Constant", [], ["c"], value_floats=[0.5, -1.0, 2.0]),
                               node("Mul", ["x", "c"])], [], (1, 3), 13),
]


@pytest.mark.parametrize("case", SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
def test_layout_operators_match_onnxruntime(tmp_path, case):
    name, nodes, inits, shape, opset = case
    check(build(tmp_path / f"{name}.onnx", nodes, inits, shape, opset))


class _WhereActivation(nn.Module):
    """Piecewise functions written with comparisons: torch.where on a mask, and a mask used as numbers."""

    def forward(self, x):
        y = torch.where(x > 0, x, 0.1 * x)
        return y * (x.abs() <= 1).float() + torch.where((x < -1) | (x > 2), 0.5 * x, torch.zeros_like(x))


def test_comparisons_masks_and_where_of_computed_tensors(tmp_path):
    path = tmp_path / "where.onnx"
    torch.onnx.export(_WhereActivation(), torch.rand(1, 6), str(path), dynamo=False, opset_version=13)
    conv = check(path)
    x = torch.randn(5, 6) * 2
    torch.testing.assert_close(conv.module(x), _WhereActivation()(x))
    nodes = [node("Relu", ["x"], "r"), node("Equal", ["r", "z"], "e"), node("Not", ["e"], "n"),
             node("Cast", ["n"], "f", to=TensorProto.FLOAT), node("Mul", ["x", "f"])]
    check(build(tmp_path / "mask.onnx", nodes, [tensor("z", np.float32(0))], (1, 6), 13))


def test_computed_conditions_indices_and_zero_divisors_are_refused_by_node(tmp_path):
    bad = {
        "recip": ([node("Relu", ["x"], "r"), node("Reciprocal", ["r"], name="n")], [], "can be zero"),
        "div": ([node("Tanh", ["x"], "t"), node("Div", ["c", "t"], name="n")], [tensor("c", np.float32(1))], "can be zero"),
        "expand": ([node("Expand", ["x", "s"], name="n")], [tensor("s", np.array([2, 1, 4], np.int64))], "batch axis"),
    }
    for key, (nodes, inits, why) in bad.items():
        path = build(tmp_path / f"{key}.onnx", nodes, inits, (1, 4), 13, out_shape=(1, 4))
        with pytest.raises(InputError, match=rf"'n' \(.*{why}"):
            onnx_to_torch(path)


@pytest.mark.parametrize("act,layer,opset", [(nn.SiLU, nn.SiLU, 17), (nn.Hardswish, nn.Hardswish, 13)])
def test_gated_activations_become_one_layer(tmp_path, act, layer, opset):
    """x * sigmoid(x) (SiLU, every opset) and x * hardsigmoid(x) (Hardswish before opset 14) as
    exporters write them: one activation layer in a chain, so bound engines see a standard network."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 6), act(), nn.Linear(6, 3)).eval()
    path = tmp_path / "gate.onnx"
    torch.onnx.export(model, torch.rand(1, 8), str(path), dynamo=False, opset_version=opset)
    conv = check(path)
    assert conv.chain and [type(m) for m in conv.module] == [nn.Flatten, nn.Linear, layer, nn.Linear]


def test_a_sigmoid_read_twice_is_not_fused(tmp_path):
    nodes = [node("Sigmoid", ["x"], "s"), node("Mul", ["x", "s"], "p"), node("Add", ["p", "s"])]
    conv = check(build(tmp_path / "twice.onnx", nodes, [], (1, 4), 13))
    assert not any(isinstance(m, nn.SiLU) for m in conv.module.modules())


def test_silu_onnx_certifies_with_crown_and_matches_the_module(tmp_path, run_cli):
    """`robust certify --method crown` bounds the exported SiLU network, with the bounds of the torch
    module it was exported from (same layers, same weights)."""
    import json

    from robustcli.certify.bounders import METHODS, InputSet
    from robustcli.certify.spec import margin_spec

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.SiLU(), nn.Linear(16, 10)).eval()
    path = tmp_path / "silu.onnx"
    torch.onnx.export(model, torch.rand(1, 1, 8, 8), str(path), dynamo=False, opset_version=17)
    conv = onnx_to_torch(path)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 3])
    C = margin_spec(y, 10)
    ball = InputSet.ball(x, 0.02, "linf")
    ours = METHODS["crown"].build(conv.module, x[:2]).lower(ball, C)
    theirs = METHODS["crown"].build(model, x[:2]).lower(ball, C)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    out = tmp_path / "c.json"
    r = run_cli("certify", "--model", path, "--data", "digits", "--n", "8", "--eps", "0.01", "--method", "crown",
                "--json", out)
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())


class _AbsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.abs(self.conv(x)).flatten(1))


@pytest.mark.parametrize("kind", ["layernorm-mlp", "abs-cnn"])
def test_attack_runs_on_everyday_exported_models(tmp_path, run_cli, kind):
    """The two files users met refused: an MLP with nn.LayerNorm and a CNN with torch.abs (opset 17)."""
    torch.manual_seed(0)
    if kind == "abs-cnn":
        model = _AbsCNN().eval()
    else:
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 10)).eval()
    path = tmp_path / f"{kind}.onnx"
    torch.onnx.export(model, torch.rand(1, 1, 8, 8), str(path), dynamo=False, opset_version=17)
    r = run_cli("attack", "--model", path, "--data", "digits", "--n", "8", "--attack", "pgd", "--eps", "0.1",
                "--steps", "3")
    assert r.exit_code == 0, r.output


def test_an_operator_still_outside_the_set_is_one_line_exit_2(tmp_path, run_cli):
    nodes = [node("Flatten", ["x"], "f", axis=1), node("Einsum", ["f", "f"], "e", equation="bi,bi->bi", name="mix"),
             node("Gemm", ["e", "w"], transB=1)]
    path = build(tmp_path / "ein.onnx", nodes, [tensor("w", rand(10, 64))], (1, 1, 8, 8), 13)
    r = run_cli("attack", "--model", path, "--data", "digits", "--n", "4")
    assert r.exit_code == 2
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "'mix' (Einsum, node 1)" in err and "Traceback" not in r.output


def test_clip_with_only_a_maximum_and_clip_as_a_positive_divisor(tmp_path):
    """Clip's bounds are optional inputs by position from opset 11: Clip(x, '', max) clamps from above
    only; a Clip with a positive minimum is a divisor positive by construction (max(norm, eps))."""
    check(build(tmp_path / "hi.onnx", [node("Clip", ["x", "", "hi"])], [tensor("hi", np.float32(0.5))], (1, 6), 13))
    nodes = [node("ReduceL2", ["x"], "n", axes=[1], keepdims=1), node("Clip", ["n", "eps"], "c"), node("Div", ["x", "c"])]
    check(build(tmp_path / "normalize.onnx", nodes, [tensor("eps", np.float32(1e-6))], (1, 6), 13))


class _RMSNormMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.norm, self.b = nn.Linear(12, 16), nn.RMSNorm(16), nn.Linear(16, 3)

    def forward(self, x):
        return self.b(self.norm(self.a(x)))


class _UpsamplingCNN(nn.Module):
    """ConvTranspose2d, GroupNorm, InstanceNorm2d and GELU, as a decoder-ish block."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.up = nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1, output_padding=1)
        self.gn, self.inorm, self.fc = nn.GroupNorm(1, 2), nn.InstanceNorm2d(2, affine=True), nn.Linear(2 * 12 * 12, 3)

    def forward(self, x):
        return self.fc(nn.functional.gelu(self.inorm(self.gn(self.up(self.conv(x))))).flatten(1))


def test_rmsnorm_as_exporters_decompose_it(tmp_path):
    """x * 1 / sqrt(mean(x^2) + eps) * w (opset 18: ReduceMean's axes an input): the reciprocal of a
    divisor positive by construction."""
    nodes = [node("Pow", ["x", "two"], "sq"), node("ReduceMean", ["sq", "ax"], "ms"), node("Add", ["ms", "eps"], "v"),
             node("Sqrt", ["v"], "r"), node("Reciprocal", ["r"], "inv"), node("Mul", ["x", "inv"], "n"),
             node("Mul", ["n", "w"])]
    inits = [tensor("two", np.float32(2)), tensor("ax", np.array([-1], np.int64)), tensor("eps", np.float32(1e-6)),
             tensor("w", rand(6, seed=1))]
    check(build(tmp_path / "rms.onnx", nodes, inits, (1, 3, 6), 18))


@pytest.mark.slow  # the default exporter takes seconds per model
@pytest.mark.parametrize("kind", ["rmsnorm", "upsampling"])
def test_default_exporter_files_convert(tmp_path, kind):
    """torch.onnx.export's default (dynamo) exporter writes opset 18+ graphs (RMSNorm as Pow /
    ReduceMean / Add / Sqrt / Reciprocal, normalisations as their nodes or decomposed)."""
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model, shape = (_RMSNormMLP(), (1, 12)) if kind == "rmsnorm" else (_UpsamplingCNN(), (1, 1, 8, 8))
    path = tmp_path / f"{kind}.onnx"
    torch.onnx.export(model.eval(), (torch.rand(*shape),), str(path), dynamo=True, verbose=False)
    conv = check(path)
    x = torch.rand(4, *shape[1:])
    torch.testing.assert_close(conv.module(x), model(x), rtol=1e-5, atol=1e-5)


def test_new_layers_keep_a_float64_file_in_float64(tmp_path):
    """dtype=None (what the spec verifier asks for) keeps a float64 file's numbers in the new layers."""
    import onnx

    graph = helper.make_graph(
        [node("LayerNormalization", ["x", "s", "b"], "n"), node("Pow", ["n", "e"], "p"), node("Max", ["p", "c"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 5])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, 5])],
        initializer=[tensor("s", rand(5, seed=1).astype(np.float64)), tensor("b", rand(5, seed=2).astype(np.float64)),
                     tensor("e", np.float64(3.0)), tensor("c", np.float64(1e-300))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    conv = onnx_to_torch(model, dtype=None)
    assert all(t.dtype == torch.float64 for t in [*conv.module.parameters(), *conv.module.buffers()])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 5))
    np.testing.assert_allclose(conv.module(torch.from_numpy(x)).detach().numpy(), session.run(None, {"x": x})[0],
                               rtol=1e-9, atol=1e-300)  # far below float32 rounding (6e-8)


def test_constant_sin_cos_fold_while_sin_of_the_input_stays_refused(tmp_path):
    """Position tables computed from constants (sin / cos of a Range) fold; Sin of a computed tensor
    is still outside the set."""
    nodes = [node("Range", ["a", "b", "d"], "r"), node("Sin", ["r"], "s"), node("Cos", ["r"], "c"),
             node("Add", ["s", "c"], "t"), node("Add", ["x", "t"])]
    inits = [tensor("a", np.float32(0)), tensor("b", np.float32(4)), tensor("d", np.float32(1))]
    check(build(tmp_path / "pos.onnx", nodes, inits, (1, 4), 13))


class _Encoder(nn.Module):
    """nn.TransformerEncoderLayer (nn.MultiheadAttention inside) on 8 tokens of 8 features, mean-pooled."""

    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.layer(x.reshape(x.shape[0], 8, 8)).mean(1))


def test_multihead_attention_export_runs_per_point(tmp_path, run_cli):
    """torch's nn.MultiheadAttention export moves the batch axis ((tokens, batch, features), batch and
    heads merged): a file that fixes its batch to 1 is read literally and run on each point (`PerPoint`),
    equal to onnxruntime and to the torch module, with gradients; `robust attack` runs on it and the
    bound engines refuse it in one line."""
    from robustcli.certify.onnx_layers import PerPoint

    torch.manual_seed(0)
    model = _Encoder().eval()
    path = tmp_path / "enc.onnx"
    conv = exported(model, path, (1, 64), 17, torch.randn(5, 64))
    assert isinstance(conv.module, PerPoint) and conv.module.vectorised
    r = run_cli("attack", "--model", path, "--data", "digits", "--n", "8", "--attack", "pgd", "--eps", "0.1",
                "--steps", "3")
    assert r.exit_code == 0, r.output
    r = run_cli("certify", "--model", path, "--data", "digits", "--n", "4", "--eps", "0.01", "--method", "crown")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output


def test_a_batch_moving_graph_with_a_symbolic_batch_stays_refused(tmp_path):
    """Only a file that fixes its batch to 1 is read per point: with a symbolic batch the transpose
    would really mix points."""
    import onnx

    graph = helper.make_graph([node("Transpose", ["x"], perm=[1, 0, 2], name="swap")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, "n", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    with pytest.raises(InputError, match="'swap'.*moves the batch axis"):
        onnx_to_torch(model)


class _SequenceCNN(nn.Module):
    """A 1-D CNN over a sequence (audio / time series): Conv1d, max and average pooling, global pooling."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(2, 4, 5, padding=2), nn.Conv1d(4, 6, 3, stride=2, dilation=2, groups=2)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        x = nn.functional.max_pool1d(torch.relu(self.c1(x)), 2)
        x = nn.functional.avg_pool1d(self.c2(x), 2, padding=1)
        return self.fc(torch.cat([x.mean(-1), x.amax(-1)], 1))


def test_one_dimensional_convolution_and_pooling(tmp_path):
    torch.manual_seed(0)
    model = _SequenceCNN().eval()
    exported(model, tmp_path / "seq.onnx", (1, 2, 32), 13, torch.randn(4, 2, 32))
    check(build(tmp_path / "gmp.onnx", [node("GlobalMaxPool", ["x"])], [], (1, 3, 4, 4), 13))
    check(build(tmp_path / "gap.onnx", [node("GlobalAveragePool", ["x"])], [], (1, 3, 5), 13))


@pytest.mark.parametrize("auto_pad,strides,kernel", [("SAME_UPPER", [2, 2], [3, 3]), ("SAME_LOWER", [2, 1], [4, 3]),
                                                     ("SAME_UPPER", [1, 1], [3, 3]), ("NOTSET", [1, 2], [3, 3])])
def test_same_and_asymmetric_convolution_padding(tmp_path, auto_pad, strides, kernel):
    """Keras / tf2onnx files: auto_pad SAME_UPPER / SAME_LOWER and explicit pads that differ between the
    ends of an axis (a zero Pad before the convolution); symmetric SAME stays one Conv2d."""
    attrs = {"auto_pad": auto_pad} if auto_pad != "NOTSET" else {"pads": [0, 1, 1, 2]}
    nodes = [node("Conv", ["x", "w", "b"], strides=strides, kernel_shape=kernel, **attrs)]
    inits = [tensor("w", rand(3, 2, *kernel, seed=1)), tensor("b", rand(3, seed=2))]
    conv = check(build(tmp_path / "same.onnx", nodes, inits, (1, 2, 7, 6), 13))
    if strides == [1, 1]:
        assert conv.chain and [type(m) for m in conv.module] == [nn.Conv2d]
    nodes = [node("Conv", ["x", "w"], strides=[2], kernel_shape=[4], auto_pad=auto_pad if auto_pad != "NOTSET" else "SAME_LOWER")]
    check(build(tmp_path / "same1d.onnx", nodes, [tensor("w", rand(3, 2, 4, seed=1))], (1, 2, 9), 13))
