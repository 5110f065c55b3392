"""Float64 ONNX files are bounded with their own float64 weights, never the weights rounded to float32.

The soundness tests build a network whose output at every input of the box is +-2^-29 in float64
but the opposite sign once its weights are rounded to float32 (two weights 1 and 1 + 2^-28, or
1 - 2^-28, that round to the same float32): a verifier that bounds the float32 copy answers the
wrong way there.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402
from vnncomp_lookalikes import save_graph, t  # noqa: E402

from robustcli.certify.onnx_import import onnx_to_torch  # noqa: E402
from robustcli.certify.spec_lirpa import lirpa_box_lower  # noqa: E402
from robustcli.certify.vnncomp import Instance, run_instance  # noqa: E402

TINY = 2.0**-29  # the float64 output's size; 2^-28 is below half of float32's spacing at 1 (2^-24)


def _save(path: Path, nodes, inits, in_shape, out_shape, in_type=TensorProto.DOUBLE,
          out_type=TensorProto.DOUBLE) -> Path:
    """A float64 (by default) graph from input x to output y."""
    return save_graph(path, nodes, inits, in_shape, out_shape, dtype=in_type, out_dtype=out_type, in_name="x",
                      out_name="y")


def _rounding_net(path: Path, second_weight: float, bias: float, activation: str = "Relu") -> Path:
    """y = act(x) - act(w x) + bias on one input, w = second_weight: for ReLU and x > 0, (1 - w) x + bias
    in float64 but exactly `bias` once w is rounded to float32 (1.0)."""
    w1 = np.array([[1.0], [second_weight]], dtype=np.float64)
    assert np.float32(w1[0, 0]) == np.float32(w1[1, 0])  # the two weights round to the same float32
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["z"], transB=1),
        helper.make_node(activation, ["z"], ["h"]),
        helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], transB=1),
    ]
    inits = [t("w1", w1), t("b1", np.zeros(2)), t("w2", np.array([[1.0, -1.0]])), t("b2", np.array([bias]))]
    return _save(path, nodes, inits, (1, 1), (1, 1))


def _y0_positive_spec(path: Path, lo: float, hi: float) -> Path:
    """The property Y_0 > 0 on X_0 in [lo, hi] (the file asserts its violation, Y_0 <= 0)."""
    path.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
                    f"(assert (>= X_0 {lo!r}))\n(assert (<= X_0 {hi!r}))\n(assert (<= Y_0 0.0))\n")
    return path


def _ort(path: Path, x: float) -> float:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float(s.run(None, {"x": np.array([[x]], dtype=np.float64)})[0].reshape(-1)[0])


@pytest.fixture()
def false_in_float64(tmp_path) -> tuple[Path, Path]:
    """Y_0 = -2^-29 x... < 0 on the whole box in float64 (violated); +2^-29 with float32 weights."""
    net = _rounding_net(tmp_path / "neg.onnx", 1.0 + 2.0**-28, TINY)
    spec = _y0_positive_spec(tmp_path / "neg.vnnlib", 0.75, 1.0)
    assert _ort(net, 1.0) == -TINY and _ort(net, 0.75) < 0  # the file's own answer: violated everywhere
    return net, spec


@pytest.fixture()
def true_in_float64(tmp_path) -> tuple[Path, Path]:
    """The mirror: Y_0 > 0 on the whole box in float64 (holds); -2^-29 with float32 weights."""
    net = _rounding_net(tmp_path / "pos.onnx", 1.0 - 2.0**-28, -TINY)
    spec = _y0_positive_spec(tmp_path / "pos.vnnlib", 0.75, 1.0)
    assert _ort(net, 1.0) == TINY and _ort(net, 0.75) > 0
    return net, spec


def _vnncomp(net: Path, spec: Path, methods=("attack", "ibp", "crown", "alpha-crown", "bab")):
    return run_instance(Instance(net, spec, 20.0), timeout=20.0, methods=methods)


@pytest.mark.parametrize("methods", [("attack", "ibp", "crown", "alpha-crown", "bab"), ("ibp", "crown"),
                                     ("alpha-crown",)])
def test_float64_file_violated_by_a_rounding_margin_is_never_holds(false_in_float64, methods):
    net, spec = false_in_float64
    r = _vnncomp(net, spec, methods)
    assert r.result != "holds", r.stages
    if "bab" in methods:  # input branch and bound checks points on the float64 model: onnxruntime confirms one
        assert r.result == "violated" and r.confirmed_by == "onnxruntime", r.stages


@pytest.mark.parametrize("split", ["input", "relu"])
def test_branch_and_bound_finds_a_counterexample_that_exists_only_in_float64(tmp_path, split):
    """On X_0 in [-1, 1] the ReLUs are unstable; the float64 output is < 0 for x > 1/2 only. The
    attack runs the float32 copy (no candidate there); branch and bound checks its points on the
    float64 model and onnxruntime confirms the one it returns, whichever it splits."""
    net = _rounding_net(tmp_path / "neg.onnx", 1.0 + 2.0**-28, TINY)
    spec = _y0_positive_spec(tmp_path / "wide.vnnlib", -1.0, 1.0)
    r = run_instance(Instance(net, spec, 20.0), timeout=20.0, bab_split=split)
    assert r.result == "violated" and r.method == "bab" and r.confirmed_by == "onnxruntime", r.stages


def _two_branch_net(path: Path, second_weight: float, bias: float, join: str) -> Path:
    """relu(x) and relu(w x) on two branches joined by `join`: "Add" of relu(x) and -relu(w x) (a
    residual add: native graph IBP, CROWN and branch and bound) or "Sub" of the two (a subtraction
    of computed tensors: auto_LiRPA bounds it), then + bias; the same function as `_rounding_net`."""
    nodes = [helper.make_node("Gemm", ["x", "wa", "z"], ["a"], transB=1), helper.make_node("Relu", ["a"], ["ha"]),
             helper.make_node("Gemm", ["x", "wb", "z"], ["b"], transB=1), helper.make_node("Relu", ["b"], ["hb"])]
    if join == "Add":
        nodes += [helper.make_node("Gemm", ["hb", "minus", "z"], ["nb"], transB=1),
                  helper.make_node("Add", ["ha", "nb"], ["d"])]
    else:
        nodes.append(helper.make_node("Sub", ["ha", "hb"], ["d"]))
    nodes.append(helper.make_node("Add", ["d", "c"], ["y"]))
    inits = [t("wa", np.array([[1.0]])), t("wb", np.array([[second_weight]])), t("z", np.zeros(1)),
             t("minus", np.array([[-1.0]])), t("c", np.array([bias]))]
    return _save(path, nodes, inits, (1, 1), (1, 1))


@pytest.mark.parametrize("join", ["Add", "Sub"])
def test_float64_relu_graph_models_are_bounded_with_their_float64_weights(tmp_path, join):
    neg = _two_branch_net(tmp_path / "neg.onnx", 1.0 + 2.0**-28, TINY, join)
    pos = _two_branch_net(tmp_path / "pos.onnx", 1.0 - 2.0**-28, -TINY, join)
    assert not onnx_to_torch(neg).chain  # a graph model
    spec = _y0_positive_spec(tmp_path / "p.vnnlib", 0.75, 1.0)
    assert _ort(neg, 1.0) == -TINY and _ort(pos, 1.0) == TINY
    for methods in (("ibp", "crown", "alpha-crown"), ("attack", "ibp", "crown", "alpha-crown", "bab")):
        r = _vnncomp(neg, spec, methods)
        assert r.result != "holds", (methods, r.stages)
        if join == "Add" and "bab" in methods:  # branch and bound on the native graph checks in float64
            assert r.result == "violated" and r.confirmed_by == "onnxruntime", r.stages
    r = _vnncomp(pos, spec)
    assert r.result == "holds", r.stages


def test_float64_graph_model_is_bounded_in_float64_by_native_ibp_and_auto_lirpa(tmp_path):
    """A sigmoid network is a graph model for the verifier (native IBP, auto_LiRPA or native graph
    CROWN bound it): on the point box X_0 = 1 its output is sigmoid(1) - sigmoid(1 + 2^-28) + 2^-32
    < 0 in float64 but exactly 2^-32 > 0 with float32 weights, which every stage proved there."""
    net = _rounding_net(tmp_path / "sig.onnx", 1.0 + 2.0**-28, 2.0**-32, activation="Sigmoid")
    spec = _y0_positive_spec(tmp_path / "sig.vnnlib", 1.0, 1.0)
    assert _ort(net, 1.0) < 0
    for methods in (("ibp",), ("crown",), ("alpha-crown",), ("attack", "ibp", "crown", "alpha-crown", "bab")):
        r = _vnncomp(net, spec, methods)
        assert r.result in ("unknown", "timeout", "violated"), (methods, r.result, r.stages)
        assert r.result != "violated" or r.confirmed_by == "onnxruntime"


def test_auto_lirpa_bounds_a_float64_model_with_its_own_weights():
    model = nn.Sequential(nn.Linear(1, 2), nn.Sigmoid(), nn.Linear(2, 1)).double().eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [1.0 + 2.0**-28]], dtype=torch.float64))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[1.0, -1.0]], dtype=torch.float64))
        model[2].bias.fill_(2.0**-32)
    x = torch.ones(1, 1, dtype=torch.float64)
    with torch.no_grad():
        exact = float(model(x))
        assert exact < 0 and float(copy.deepcopy(model).float()(x.float())) > 0
    C, d = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    before = torch.get_default_dtype()
    for method in ("ibp", "crown", "alpha-crown"):
        lower = lirpa_box_lower(model, x, x, C, d, method)
        # the bound of the float64 weights (within the bound arithmetic's own rounding), not of the
        # float32 ones (2^-32 > 0 there, which would prove the property)
        assert lower.dtype == torch.float64 and float(lower) < exact / 2, method
        assert torch.get_default_dtype() == before  # set to float64 for auto_LiRPA's call only
        rounded = lirpa_box_lower(copy.deepcopy(model).float(), x, x, C, d, method)
        assert float(rounded) > 0, method


def test_float64_file_that_holds_only_in_float64_is_proved_not_violated(true_in_float64):
    net, spec = true_in_float64
    r = _vnncomp(net, spec)
    assert r.result == "holds", r.stages  # float64 CROWN is exact here (every ReLU is active)
    # the float32 model's attack candidates were refused by onnxruntime on the file
    assert "not confirmed" in r.stages[0].get("note", ""), r.stages


@pytest.mark.parametrize("second_weight, bias, want", [(1.0 + 2.0**-28, TINY, "violated"),
                                                       (1.0 - 2.0**-28, -TINY, "holds")])
def test_float64_torch_model_is_bounded_in_float64_and_attacked_in_float32(second_weight, bias, want):
    """verify_property takes a float64 torch model as it is: bounds of its weights, attacks on a float32
    copy, and the default reference (the model itself) in float64."""
    from robustcli.certify.spec_verify import attack_copy, verify_property
    from robustcli.certify.vnnlib import parse_vnnlib

    model = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1)).double().eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [second_weight]], dtype=torch.float64))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[1.0, -1.0]], dtype=torch.float64))
        model[2].bias.fill_(bias)
    assert all(p.dtype == torch.float32 for p in attack_copy(model).parameters())
    assert all(p.dtype == torch.float64 for p in model.parameters())  # the copy leaves the model alone
    prop = parse_vnnlib("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
                        "(assert (>= X_0 0.75))\n(assert (<= X_0 1.0))\n(assert (<= Y_0 0.0))\n")
    r = verify_property(model, prop, (1,), timeout=20)
    assert r.status == want, r.stages
    assert r.status != "violated" or (r.confirmed_by == "torch" and float(r.outputs[0]) <= 0)


def test_certify_command_bounds_the_float64_file(false_in_float64, true_in_float64, tmp_path, run_cli):
    for (net, spec), want in ((false_in_float64, "violated"), (true_in_float64, "holds")):
        out = tmp_path / f"{net.stem}.json"
        r = run_cli("certify", "--model", net, "--spec", spec, "--timeout", "20", "--counterexample",
                    tmp_path / "ce.txt", "--json", out)
        assert r.exit_code == 0, r.output
        assert json.loads(out.read_text())["status"] == want, r.output


# -- the conversion keeps the file's numbers --------------------------------------------------------


def _exact(module_tensor: torch.Tensor, array: np.ndarray) -> bool:
    """Bit for bit: same dtype (float64) and the same numbers."""
    return module_tensor.dtype == torch.float64 and np.array_equal(module_tensor.detach().numpy(), array)


def _random_float64(rng, *shape) -> np.ndarray:
    # numbers with all 53 bits used: none of them is a float32
    return rng.standard_normal(shape) * (1.0 + 2.0**-40)


def test_float64_mlp_parameters_are_the_files_arrays_bit_for_bit(tmp_path):
    rng = np.random.default_rng(0)
    w0, b0 = _random_float64(rng, 6, 4), _random_float64(rng, 6)  # Gemm, transB=1
    w1, b1 = _random_float64(rng, 6, 5), _random_float64(rng, 5)  # Gemm, transB=0
    w2, b2 = _random_float64(rng, 5, 3), _random_float64(rng, 3)  # MatMul + Add
    assert not np.array_equal(w0.astype(np.float32).astype(np.float64), w0)
    nodes = [helper.make_node("Gemm", ["x", "w0", "b0"], ["z0"], transB=1), helper.make_node("Relu", ["z0"], ["h0"]),
             helper.make_node("Gemm", ["h0", "w1", "b1"], ["z1"]), helper.make_node("Relu", ["z1"], ["h1"]),
             helper.make_node("MatMul", ["h1", "w2"], ["m2"]), helper.make_node("Add", ["m2", "b2"], ["y"])]
    inits = [t(n, a) for n, a in (("w0", w0), ("b0", b0), ("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))]
    net = _save(tmp_path / "mlp64.onnx", nodes, inits, (1, 4), (1, 3))
    conv = onnx_to_torch(net, dtype=None)
    assert conv.file_dtype == torch.float64 and conv.chain
    lins = [m for m in conv.module if isinstance(m, nn.Linear)]
    assert len(lins) == 3
    assert _exact(lins[0].weight, w0) and _exact(lins[0].bias, b0)
    assert _exact(lins[1].weight, w1.T) and _exact(lins[1].bias, b1)
    assert _exact(lins[2].weight, w2.T) and _exact(lins[2].bias, b2)  # the Add folded into the Linear
    x = rng.uniform(-1, 1, (1, 4))
    import onnxruntime as ort

    ref = ort.InferenceSession(str(net), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        ours = conv.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-13, atol=1e-13)
    # The default stays a float32 module (attacks, training): the same weights rounded to float32.
    conv32 = onnx_to_torch(net)
    assert conv32.file_dtype == torch.float64
    assert all(p.dtype == torch.float32 for p in conv32.module.parameters())
    assert torch.equal(conv32.module[0].weight, torch.from_numpy(w0.astype(np.float32)))


def test_float64_conv_batchnorm_and_constants_keep_their_values(tmp_path):
    rng = np.random.default_rng(1)
    wc, bc = _random_float64(rng, 3, 2, 3, 3), _random_float64(rng, 3)
    scale, shift = _random_float64(rng, 3), _random_float64(rng, 3)
    mean, var = _random_float64(rng, 3), np.abs(_random_float64(rng, 3)) + 0.5
    sub = _random_float64(rng, 1, 3, 1, 1)
    nodes = [helper.make_node("Conv", ["x", "wc", "bc"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "t", "m", "v"], ["n"], epsilon=1e-5),
             helper.make_node("Sub", ["n", "sub"], ["r"]), helper.make_node("Relu", ["r"], ["h"]),
             helper.make_node("Reshape", ["h", "shape"], ["y"])]  # an int64 constant: untouched
    inits = [t("wc", wc), t("bc", bc), t("s", scale), t("t", shift), t("m", mean), t("v", var), t("sub", sub),
             t("shape", np.array([1, 48], dtype=np.int64))]
    net = _save(tmp_path / "conv64.onnx", nodes, inits, (1, 2, 4, 4), (1, 48))
    module = onnx_to_torch(net, dtype=None).module
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    assert _exact(convs[0].weight, wc) and _exact(convs[0].bias, bc)
    assert _exact(bns[0].weight, scale) and _exact(bns[0].bias, shift)
    assert _exact(bns[0].running_mean, mean) and _exact(bns[0].running_var, var)
    shifts = [b for name, b in module.named_buffers() if name.endswith("shift") and b.numel() == 3]
    assert len(shifts) == 1 and _exact(shifts[0], -sub[0])  # negating is exact
    assert all(t.dtype == torch.float64 for t in (*module.parameters(), *module.buffers()) if t.is_floating_point())


def test_mixed_file_float32_input_cast_to_float64_weights_is_converted_in_float64(tmp_path):
    """A float32 input cast to double in the file, then float64 weights: the file computes in float64
    after the cast, so the bounds use the float64 weights; float32 files stay float32."""
    rng = np.random.default_rng(2)
    w, b = _random_float64(rng, 2, 3), _random_float64(rng, 2)
    nodes = [helper.make_node("Cast", ["x"], ["xd"], to=TensorProto.DOUBLE),
             helper.make_node("Gemm", ["xd", "w", "b"], ["y"], transB=1)]
    net = _save(tmp_path / "mixed.onnx", nodes, [t("w", w), t("b", b)], (1, 3), (1, 2), in_type=TensorProto.FLOAT)
    conv = onnx_to_torch(net, dtype=None)
    assert conv.file_dtype == torch.float64
    lin = next(m for m in conv.module.modules() if isinstance(m, nn.Linear))
    assert _exact(lin.weight, w) and _exact(lin.bias, b)
    f32 = _save(tmp_path / "f32.onnx", [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
                [t("w", w.astype(np.float32)), t("b", b.astype(np.float32))], (1, 3), (1, 2),
                in_type=TensorProto.FLOAT, out_type=TensorProto.FLOAT)
    conv = onnx_to_torch(f32, dtype=None)
    assert conv.file_dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in conv.module.parameters())
