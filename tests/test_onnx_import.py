"""ONNX -> torch conversion: equal to onnxruntime on random inputs; bad graphs exit 2 naming the node."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from onnx_helpers import helper, mlp_onnx, save, tensor
from onnx import TensorProto  # noqa: E402 - after onnx_helpers, which skips these tests without onnx

ort = pytest.importorskip("onnxruntime")

from robustcli.certify.onnx_import import onnx_to_torch  # noqa: E402
from robustcli.certify.onnx_layers import OnnxGraph  # noqa: E402
from robustcli.errors import InputError  # noqa: E402


def assert_matches_onnxruntime(path, conv, n: int = 8, scale: float = 1.0) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(1)
    xs = (scale * rng.standard_normal((n, *conv.input_shape))).astype(np.float32)
    ref = np.concatenate([session.run(None, {name: x[None]})[0] for x in xs])
    with torch.no_grad():
        ours = conv.module(torch.from_numpy(xs)).numpy()  # the whole batch at once
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_vnncomp_style_mlp_becomes_standard_sequential(tmp_path):
    path = mlp_onnx(tmp_path / "mlp.onnx")
    conv = onnx_to_torch(path)
    assert conv.chain and isinstance(conv.module, nn.Sequential)
    assert [type(m) for m in conv.module] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert conv.input_shape == (12, 1)
    assert_matches_onnxruntime(path, conv)


def test_matmul_add_normalisation_reshape_identity_constant(tmp_path):
    rng = np.random.default_rng(2)
    w0 = rng.standard_normal((16, 8)).astype(np.float32)
    w1 = rng.standard_normal((8, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["mean"], value=tensor("m", np.full((1, 1, 4, 4), 0.3, np.float32))),
        helper.make_node("Sub", ["x", "mean"], ["a"]),
        helper.make_node("Div", ["a", "std"], ["b"]),
        helper.make_node("Reshape", ["b", "shape"], ["c"]),
        helper.make_node("MatMul", ["c", "w0"], ["d"]),
        helper.make_node("Add", ["d", "b0"], ["e"]),
        helper.make_node("Identity", ["e"], ["e2"]),
        helper.make_node("Relu", ["e2"], ["f"]),
        helper.make_node("MatMul", ["f", "w1"], ["g"]),
        helper.make_node("Mul", ["g", "two"], ["y"]),
    ]
    inits = [
        tensor("std", np.array([0.5], np.float32)),
        tensor("shape", np.array([1, 16], np.int64)),
        tensor("w0", w0), tensor("b0", rng.standard_normal(8).astype(np.float32)),
        tensor("w1", w1), tensor("two", np.array(2.0, np.float32)),
    ]
    path = save(tmp_path / "mm.onnx", nodes, inits, (1, 1, 4, 4), (1, 4))
    conv = onnx_to_torch(path)
    assert conv.chain
    # MatMul + Add and MatMul * 2 fold into Linear layers; the reshape is a Flatten.
    assert sum(isinstance(m, nn.Linear) for m in conv.module) == 2
    assert any(isinstance(m, nn.Flatten) for m in conv.module)
    assert_matches_onnxruntime(path, conv)


def test_conv_batchnorm_transpose_noop(tmp_path):
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c", "s", "bb", "mu", "var"], ["n"], epsilon=1e-5),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["g"], transB=1),
        helper.make_node("Reshape", ["g", "s4"], ["g4"]),
        helper.make_node("Transpose", ["g4"], ["t"], perm=[0, 2, 3, 1]),  # moves only size-1 axes
        helper.make_node("Flatten", ["t"], ["y"]),
    ]
    inits = [
        tensor("cw", rng.standard_normal((4, 2, 3, 3)).astype(np.float32)),
        tensor("cb", rng.standard_normal(4).astype(np.float32)),
        tensor("s", rng.uniform(0.5, 2, 4).astype(np.float32)),
        tensor("bb", rng.standard_normal(4).astype(np.float32)),
        tensor("mu", rng.standard_normal(4).astype(np.float32)),
        tensor("var", rng.uniform(0.5, 2, 4).astype(np.float32)),
        tensor("w", rng.standard_normal((5, 4 * 3 * 3)).astype(np.float32)),
        tensor("b", rng.standard_normal(5).astype(np.float32)),
        tensor("s4", np.array([1, 5, 1, 1], np.int64)),
    ]
    path = save(tmp_path / "cnn.onnx", nodes, inits, (1, 2, 6, 6), (1, 5))
    conv = onnx_to_torch(path)
    assert conv.chain
    assert any(isinstance(m, nn.Conv2d) for m in conv.module) and any(isinstance(m, nn.BatchNorm2d) for m in conv.module)
    assert_matches_onnxruntime(path, conv)


def test_residual_graph_falls_back_to_graph_module(tmp_path):
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Gemm", ["x", "w0", "b0"], ["a"], transB=1),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Gemm", ["r", "w1", "b1"], ["c"], transB=1),
        helper.make_node("Add", ["c", "a"], ["s"]),
        helper.make_node("Gemm", ["s", "w2", "b2"], ["y"], transB=1),
    ]
    inits = [tensor(f"{k}{i}", rng.standard_normal(shape).astype(np.float32))
             for i, (ws, bs) in enumerate([((6, 5), 6), ((6, 6), 6), ((3, 6), 3)])
             for k, shape in (("w", ws), ("b", (bs,)))]
    path = save(tmp_path / "res.onnx", nodes, inits, (1, 5), (1, 3))
    conv = onnx_to_torch(path)
    assert not conv.chain and isinstance(conv.module, OnnxGraph)
    assert_matches_onnxruntime(path, conv)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_onnx_export_round_trip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 10)).eval()
    path = tmp_path / "exported.onnx"
    try:
        torch.onnx.export(model, torch.zeros(1, 1, 8, 8), str(path), dynamo=False)
    except ModuleNotFoundError as e:  # the exporter's optional dependency only; any other failure fails
        pytest.skip(f"torch.onnx.export needs {e.name}")
    conv = onnx_to_torch(path)
    assert_matches_onnxruntime(path, conv)
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(conv.module(x), model(x), rtol=1e-4, atol=1e-5)


def test_unsupported_op_names_the_node(tmp_path):
    # Sigmoid is supported now (attacks need only forward/backward passes); Sin stays outside the set.
    nodes = [helper.make_node("Sin", ["x"], ["y"], name="squash")]
    path = save(tmp_path / "sig.onnx", nodes, [], (1, 4), (1, 4))
    with pytest.raises(InputError, match=r"'squash' \(Sin, node 0\)"):
        onnx_to_torch(path)


def test_reorder_transpose_converts_and_batch_transpose_is_refused(tmp_path):
    # A Transpose that reorders data within a point (an NHWC input moved to NCHW) is a Permute layer;
    # one that moves the batch axis would mix points and stays refused, naming the node.
    nodes = [helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 1], name="swap")]
    path = save(tmp_path / "tr.onnx", nodes, [], (1, 2, 3), (1, 3, 2))
    conv = onnx_to_torch(path)
    assert_matches_onnxruntime(path, conv)
    nodes = [helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0, 2], name="swap")]
    path = save(tmp_path / "trb.onnx", nodes, [], (1, 2, 3), (2, 1, 3))
    with pytest.raises(InputError, match="'swap'.*moves the batch axis"):
        onnx_to_torch(path)


def test_cli_exit_2_on_bad_onnx(tmp_path, run_cli):
    # MaxPool is supported now (attacks must accept ONNX CNNs with max pooling); LpPool is not.
    nodes = [helper.make_node("LpPool", ["x"], ["y"], kernel_shape=[2, 2], name="pool1")]
    path = save(tmp_path / "pool.onnx", nodes, [], (1, 1, 8, 8), (1, 1, 4, 4))
    r = run_cli("attack", "--model", path, "--data", "digits", "--n", "4")
    assert r.exit_code == 2
    assert "pool1" in r.stderr and "LpPool" in r.stderr and "Traceback" not in r.output
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    r = run_cli("attack", "--model", garbage, "--data", "digits", "--n", "4")
    assert r.exit_code == 2 and "garbage.onnx" in r.stderr


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_attack_command_accepts_onnx_model(tmp_path, run_cli, digits_test):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    path = tmp_path / "digits.onnx"
    torch.onnx.export(model, digits_test.x[:1], str(path), dynamo=False)
    out = tmp_path / "r.json"
    r = run_cli("attack", "--model", path, "--data", "digits", "--n", "64", "--eps", "0.05", "--json", out)
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    with torch.no_grad():
        expected = (model(digits_test.x[:64]).argmax(1) == digits_test.y[:64]).float().mean().item()
    assert report["clean_accuracy"] == pytest.approx(expected)


class _PoolingCNN(torch.nn.Module):
    """A CNN with the operations attacks must accept from ONNX: padding, max and average pooling,
    sigmoid/tanh/leaky ReLU, clipping, a channel concatenation and a softmax head."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 2 * 2, 10)

    def forward(self, x):
        import torch.nn.functional as F

        x = F.pad(x, (1, 1, 1, 1))
        x = F.max_pool2d(torch.tanh(self.conv(x)), 2)
        y = F.leaky_relu(self.conv2(x), 0.1).clamp(-3, 3)
        x = torch.cat([F.avg_pool2d(x, 2), torch.sigmoid(F.avg_pool2d(y, 2))], 1)
        return F.softmax(self.fc(x.flatten(1)), dim=1)


def test_attack_accepts_an_onnx_cnn_with_pooling_and_smooth_activations(tmp_path, run_cli):
    """`robust attack` needs only forward and backward passes: the importer must not refuse these."""
    from robustcli.certify.onnx_import import onnx_to_torch

    torch.manual_seed(0)
    model = _PoolingCNN().eval()
    path = tmp_path / "pool.onnx"
    x = torch.rand(3, 1, 8, 8)
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    conv = onnx_to_torch(path)
    with torch.no_grad():
        torch.testing.assert_close(conv.module(x), model(x), atol=1e-5, rtol=1e-5)
    r = run_cli("attack", "--model", path, "--data", "digits", "--n", "8", "--attack", "pgd", "--eps", "0.1",
                "--steps", "3")
    assert r.exit_code == 0, r.output


ACTIVATIONS = [
    ("Elu", {"alpha": 0.7}), ("Celu", {"alpha": 1.3}), ("Selu", {}), ("Selu", {"alpha": 1.2, "gamma": 0.9}),
    ("Softplus", {}), ("Softsign", {}), ("HardSigmoid", {}), ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}),
    ("HardSwish", {}), ("Dropout", {}), ("LogSoftmax", {"axis": 1}),
]


def _activation_mlp(tmp_path, op, attrs):
    rng = np.random.default_rng(0)
    w0, w1 = rng.standard_normal((8, 6)).astype(np.float32), rng.standard_normal((3, 8)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w0"], ["h"], transB=1), helper.make_node(op, ["h"], ["a"], **attrs),
             helper.make_node("Gemm", ["a", "w1"], ["y"], transB=1)]
    return save(tmp_path / f"{op}.onnx", nodes, [tensor("w0", w0), tensor("w1", w1)], (1, 6), (1, 3),
                opset=14)  # HardSwish is opset 14


@pytest.mark.parametrize("op,attrs", ACTIVATIONS)
def test_smooth_and_piecewise_activations_match_onnxruntime(tmp_path, op, attrs):
    """Attacks need only forward and backward passes: these activations import, equal to onnxruntime
    (scale 3 reaches both sides of every kink and saturation), with gradients."""
    path = _activation_mlp(tmp_path, op, attrs)
    conv = onnx_to_torch(path)
    assert_matches_onnxruntime(path, conv, scale=3.0)
    x = torch.randn(4, 6, requires_grad=True)
    conv.module(x).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


@pytest.mark.parametrize("op,attrs", [a for a in ACTIVATIONS if a[0] in ("Elu", "Celu", "Selu", "Softplus", "Softsign", "HardSigmoid")])
def test_monotone_activations_from_onnx_bound_soundly_with_ibp(tmp_path, op, attrs):
    """The monotone ones are the modules native IBP bounds: never above a sampled point of the ball."""
    from robustcli.certify.bounders import METHODS, InputSet
    from robustcli.certify.spec import margin_spec

    conv = onnx_to_torch(_activation_mlp(tmp_path, op, attrs))
    model = conv.module.eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 6, generator=g), torch.tensor([0, 1, 2, 0])
    C = margin_spec(y, 3)
    low = METHODS["ibp"].build(model, x[:2]).lower(InputSet.ball(x, 0.1, "linf"), C)
    pts = (x[:, None] + 0.1 * (2 * torch.rand(4, 500, 6, generator=g) - 1)).clamp(0, 1)
    with torch.no_grad():
        out = model(pts.reshape(-1, 6)).reshape(4, 500, 3)
    margins = torch.einsum("bkc,bnc->bnk", C, out)
    assert bool((low[:, None, :] <= margins + 1e-5).all())


def _gelu_mlp(tmp_path, form: str, in_features: int = 6):
    """Gemm -> GELU -> Gemm with the GELU as ONNX's node (opset 20, exact or tanh) or as exporters
    before opset 20 write it: x * 0.5 * (1 + erf(x / sqrt 2)), a product of two computed tensors."""
    rng = np.random.default_rng(1)
    w0, w1 = rng.standard_normal((8, in_features)).astype(np.float32), rng.standard_normal((10, 8)).astype(np.float32)
    inits = [tensor("w0", w0), tensor("w1", w1)]
    if form in ("decomposed", "scaled-erf"):  # scaled-erf: x * 0.5 * (1 + erf(x / 1.5)), not a GELU
        divisor = np.sqrt(2.0) if form == "decomposed" else 1.5
        inits += [tensor("sqrt2", np.array(divisor, np.float32)), tensor("one", np.array(1.0, np.float32)),
                  tensor("half", np.array(0.5, np.float32))]
        act = [helper.make_node("Div", ["h", "sqrt2"], ["s"]), helper.make_node("Erf", ["s"], ["e"]),
               helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["h", "e1"], ["p"], name="gate"),
               helper.make_node("Mul", ["p", "half"], ["a"])]
        opset = 17
    else:
        act = [helper.make_node("Gelu", ["h"], ["a"], approximate=form)]
        opset = 20
    nodes = ([helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("Gemm", ["f", "w0"], ["h"], transB=1)]
             + act + [helper.make_node("Gemm", ["a", "w1"], ["y"], transB=1)])
    shape = (1, in_features) if in_features != 64 else (1, 1, 8, 8)
    return save(tmp_path / f"gelu_{form}.onnx", nodes, inits, shape, (1, 10), opset=opset)


@pytest.mark.parametrize("form", ["none", "tanh", "decomposed"])
def test_gelu_node_and_its_erf_form_match_onnxruntime(tmp_path, form):
    """GELU as the opset-20 node (exact and tanh) and as older exporters' Erf / Mul graph imports for
    attacks, equal to onnxruntime on both sides of the curve's minimum, with finite gradients."""
    path = _gelu_mlp(tmp_path, form)
    conv = onnx_to_torch(path)
    assert_matches_onnxruntime(path, conv, scale=3.0)
    x = torch.randn(4, 6, requires_grad=True)
    conv.module(x).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and bool((x.grad != 0).any())


def test_unknown_gelu_approximation_and_division_by_a_computed_tensor_are_refused(tmp_path):
    nodes = [helper.make_node("Gelu", ["x"], ["y"], approximate="cubic", name="g")]
    with pytest.raises(InputError, match=r"'g' \(Gelu, node 0\).*approximate='cubic'"):
        onnx_to_torch(save(tmp_path / "g.onnx", nodes, [], (1, 4), (1, 4), opset=20))
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Div", ["x", "r"], ["y"], name="ratio")]
    with pytest.raises(InputError, match=r"'ratio' \(Div, node 1\).*division by a computed tensor"):
        onnx_to_torch(save(tmp_path / "d.onnx", nodes, [], (1, 4), (1, 4)))


@pytest.mark.parametrize("form", ["none", "decomposed", "scaled-erf"])
def test_gelu_model_attacks_and_certify_refuses_without_pointing_to_a_failing_method(tmp_path, run_cli, form):
    """A GELU network attacks; native IBP and CROWN bound the GELU node (certify/activation_lines.py),
    also as exporters before opset 20 write it (fused into one GELU by the importer); the methods that
    cannot (auto_LiRPA 0.3; the native ones on an Erf / Mul product that is not a GELU) refuse in one
    line (exit 2) that names what is missing and never suggests a method that fails too."""
    path = _gelu_mlp(tmp_path, form, in_features=64)
    r = run_cli("attack", "--model", path, "--data", "digits", "--n", "8", "--attack", "pgd", "--eps", "0.1",
                "--steps", "3")
    assert r.exit_code == 0, r.output
    gelu = form != "scaled-erf"
    if gelu:
        for method in ("ibp", "crown"):
            r = run_cli("certify", "--model", path, "--data", "digits", "--n", "4", "--eps", "0.01", "--method", method)
            assert r.exit_code == 0, r.output
    for method in ("lirpa-crown",) if gelu else ("ibp", "crown", "lirpa-crown"):
        r = run_cli("certify", "--model", path, "--data", "digits", "--n", "4", "--eps", "0.01", "--method", method)
        assert r.exit_code == 2, (method, r.output)
        err = r.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in r.output, (method, r.output)
        assert "ERROR" not in r.output  # auto_LiRPA's own log lines stay out of the terminal
        if gelu:  # native IBP bounds the GELU node, so pointing there is right
            assert "--method ibp" in err, (method, err)
            continue
        assert "try --method ibp" not in err and "lirpa-crown (auto_LiRPA) bounds" not in err, (method, err)
        assert ("cannot bound it either" in err or "does not bound it either" in err), (method, err)


def test_constant_of_shape_bomb_and_nan_weights_are_refused_in_one_line(tmp_path, run_cli):
    """Attacker-made files: a ConstantOfShape asking for 10^10 elements is refused before numpy
    allocates them; NaN weights are named (not reported as a batch-mixing graph)."""
    from onnx import numpy_helper

    bomb = save(tmp_path / "bomb.onnx", [
        helper.make_node("ConstantOfShape", ["shp"], ["c"], value=numpy_helper.from_array(np.array([1.0], np.float32))),
        helper.make_node("Add", ["x", "c"], ["y"])], [tensor("shp", np.array([1, 100_000, 100_000], np.int64))],
        (1, 64), (1, 64))
    nan = save(tmp_path / "nan.onnx", [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
               [tensor("w", np.full((10, 64), np.nan, np.float32))], (1, 64), (1, 10))
    for path, words in ((bomb, "ConstantOfShape"), (nan, "'w' holds NaN")):
        r = run_cli("attack", "--model", path, "--data", "digits", "--n", "4")
        assert r.exit_code == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output
        assert "Traceback" not in r.output


def test_exporter_no_ops_convert_and_their_unsafe_forms_are_refused(tmp_path):
    # float -> float Cast and Squeeze/Unsqueeze of computed tensors are layout no-ops; a cast to an
    # integer type, dropout in training mode, or squeezing the batch axis are refused by name.
    nodes = [helper.make_node("Cast", ["x"], ["c"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["c", "ax"], ["u"]), helper.make_node("Squeeze", ["u", "ax"], ["y"])]
    path = save(tmp_path / "ok.onnx", nodes, [tensor("ax", np.array([-1], np.int64))], (1, 4), (1, 4))
    assert_matches_onnxruntime(path, onnx_to_torch(path))
    bad = {
        "int": ([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT32, name="tocast")], [], "int32"),
        "train": ([helper.make_node("Dropout", ["x", "r", "t"], ["y"], name="drop")],
                  [tensor("r", np.float32(0.5)), tensor("t", np.bool_(True))], "training_mode"),
        "batch": ([helper.make_node("Squeeze", ["x", "ax0"], ["y"], name="sq")],
                  [tensor("ax0", np.array([0], np.int64))], "batch axis"),
    }
    for name, (nodes, inits, why) in bad.items():
        out_shape = (4,) if name == "batch" else (1, 4)
        elem = TensorProto.INT32 if name == "int" else TensorProto.FLOAT
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                                  [helper.make_tensor_value_info("y", elem, list(out_shape))], initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        with pytest.raises(InputError, match=why):
            onnx_to_torch(model)


def test_slice_and_split_of_computed_tensors_match_onnxruntime(tmp_path):
    # Slice in both forms (attributes before opset 10, inputs after) and Split: Slice layers.
    nodes = [helper.make_node("Slice", ["x"], ["a"], starts=[1], ends=[4], axes=[1]),
             helper.make_node("Relu", ["a"], ["y"])]
    path = save(tmp_path / "s9.onnx", nodes, [], (1, 6), (1, 3), opset=9)
    assert_matches_onnxruntime(path, onnx_to_torch(path))
    nodes = [helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1),
             helper.make_node("Slice", ["b", "st", "en", "ax", "sp"], ["c"]),
             helper.make_node("Concat", ["c", "a"], ["y"], axis=1)]
    inits = [tensor("sizes", np.array([2, 4], np.int64)), tensor("st", np.array([-1], np.int64)),
             tensor("en", np.array([-100], np.int64)), tensor("ax", np.array([1], np.int64)),
             tensor("sp", np.array([-2], np.int64))]
    path = save(tmp_path / "neg.onnx", nodes, inits, (1, 6), (1, 4))
    with pytest.raises(InputError, match="negative step"):
        onnx_to_torch(path)
    inits[-1] = tensor("sp", np.array([1], np.int64))
    inits[1], inits[2] = tensor("st", np.array([1], np.int64)), tensor("en", np.array([2**62], np.int64))
    path = save(tmp_path / "s13.onnx", nodes, inits, (1, 6), (1, 5))
    assert_matches_onnxruntime(path, onnx_to_torch(path))


def test_exported_gelu_is_fused_only_where_its_inner_values_are_read_by_it_alone(tmp_path):
    """x * 0.5 * (1 + erf(x / sqrt 2)) becomes one GELU (bounds engines read it); if the erf is
    also an output of the graph's arithmetic elsewhere, the product stays (attack-only)."""
    import onnxruntime as ort

    conv = onnx_to_torch(_gelu_mlp(tmp_path, "decomposed", in_features=6))
    assert any(isinstance(m, torch.nn.GELU) for m in conv.module.modules())
    x = torch.randn(5, 6)
    sess = ort.InferenceSession(str(tmp_path / "gelu_decomposed.onnx"))
    want = np.concatenate([sess.run(None, {"x": x[i : i + 1].numpy()})[0] for i in range(5)])
    np.testing.assert_allclose(conv.module(x).detach().numpy(), want, atol=1e-5)
    assert not any(isinstance(m, torch.nn.GELU) for m in onnx_to_torch(_gelu_mlp(tmp_path, "scaled-erf")).module.modules())
    # the other order: 0.5 * (1 + erf(x / sqrt 2)) first, then the product with x (x times 0.7071 for the division)
    nodes = [helper.make_node("Mul", ["x", "rsqrt2"], ["s"]), helper.make_node("Erf", ["s"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["e1", "half"], ["g"]),
             helper.make_node("Mul", ["g", "x"], ["y"])]
    inits = [tensor("rsqrt2", np.array(1 / np.sqrt(2.0), np.float32)), tensor("one", np.array(1.0, np.float32)),
             tensor("half", np.array(0.5, np.float32))]
    other = onnx_to_torch(save(tmp_path / "other.onnx", nodes, inits, (1, 4), (1, 4)))
    assert any(isinstance(m, torch.nn.GELU) for m in other.module.modules())
    xo = torch.randn(3, 4)
    torch.testing.assert_close(other.module(xo), torch.nn.functional.gelu(xo), atol=1e-6, rtol=1e-5)
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Div", ["x", "sqrt2"], ["s"]), helper.make_node("Erf", ["s"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["x", "e1"], ["p"]),
             helper.make_node("Add", ["p", "e"], ["y"])]  # the erf read twice: no fusion
    inits = [tensor("sqrt2", np.array(np.sqrt(2.0), np.float32)), tensor("one", np.array(1.0, np.float32))]
    shared = onnx_to_torch(save(tmp_path / "shared.onnx", nodes, inits, (1, 4), (1, 4)))
    xs = torch.from_numpy(rng.standard_normal((1, 4)).astype(np.float32))
    e = torch.erf(xs / np.sqrt(2.0))
    torch.testing.assert_close(shared.module(xs), xs * (1 + e) + e)
    assert not any(isinstance(m, torch.nn.GELU) for m in shared.module.modules())
