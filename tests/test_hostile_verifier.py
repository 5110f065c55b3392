"""Attacker-made inputs to the verifier surface (`certify --spec`, `vnncomp`): properties whose
arithmetic overflows or cancels, networks with infinite weights, graphs whose intermediate tensors
or folded constants would exhaust memory. Each is refused in one line with exit 2 (or parsed for
what it means), never answered `holds` from inf / NaN arithmetic.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from hostile_files import one_error_line

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx_helpers import mlp_onnx, tensor, vnnlib_box  # noqa: E402

from robustcli.certify.onnx_import import onnx_to_torch  # noqa: E402
from robustcli.certify.vnnlib import parse_vnnlib  # noqa: E402
from robustcli.core.errors import InputError  # noqa: E402

W = np.random.default_rng(0).standard_normal((3, 12)).astype(np.float32)
BOX = vnnlib_box([0.0] * 12, [0.1] * 12, 0, 3)
HEAD = "".join(f"(declare-const X_{i} Real)\n" for i in range(12)) + "".join(f"(declare-const Y_{j} Real)\n" for j in range(3))
BOUNDS = "".join(f"(assert (<= X_{i} 0.1))\n(assert (>= X_{i} 0.0))\n" for i in range(12))


def _raw(path: Path, nodes, inits=(), in_shape=(1, 12), out_shape=(1, 3), opset: int = 13) -> Path:
    """An ONNX file (1, 12) -> (1, 3) written without the checker's shape inference."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))], initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def _gemm(path: Path, w=W, b=None, **kw) -> Path:
    inits = [tensor("w", w)] + ([tensor("b", b)] if b is not None else [])
    return _raw(path, [helper.make_node("Gemm", ["x", "w", *(["b"] if b is not None else [])], ["y"], transB=1)], inits, **kw)


# -- VNNLIB arithmetic ----------------------------------------------------------------------------


@pytest.mark.parametrize("line", [
    "(assert (<= (* 1e300 1e300 Y_0) Y_1))",  # coefficient inf
    "(assert (<= (- (* 1e300 1e300 Y_0) (* 1e300 1e300 Y_0)) Y_1))",  # inf - inf: NaN, once read as `holds`
    "(assert (<= (/ Y_0 1e-320) Y_1))",  # division by a subnormal
    "(assert (<= Y_0 (+ 1e308 1e308)))",  # constant overflow
    "(assert (<= (* 1e308 Y_0) (* -1e308 Y_0)))",  # the comparison's margin a - b overflows
])
def test_property_arithmetic_that_overflows_is_refused(line):
    with pytest.raises(InputError, match=r"p.vnnlib:\d+: .*overflows double precision"):
        parse_vnnlib(BOX + line + "\n", "p.vnnlib")


def test_cancelled_input_coefficients_are_constant_comparisons():
    """0 * X_0 and X_0 - X_0 used to divide by zero reading the input box; they compare constants."""
    true_ = parse_vnnlib(BOX + "(assert (<= (- X_0 X_0) 1))\n(assert (<= (* 0 X_1) 0))\n")
    assert len(true_.cases) == 1 and float(true_.cases[0].upper[0]) == 0.1
    assert parse_vnnlib(BOX + "(assert (<= (* 0 X_0) -1))\n").cases == []  # 0 <= -1: no input, the property holds
    assert parse_vnnlib(BOX + "(assert (< (- X_0 X_0) 0))\n").cases == []


def test_term_boxes_are_the_base_box_with_their_own_bounds():
    """Each disjunct's box is the base box tightened by its own input atoms (computed from those atoms
    alone, so a wide input times many disjuncts stays cheap); equal boxes share a case, empty ones drop."""
    head = HEAD + "".join(f"(assert (<= X_{i} 0.1))\n(assert (>= X_{i} 0.0))\n" for i in range(1, 12))
    prop = parse_vnnlib(head + "(assert (<= X_0 0.1))\n(assert (or "
                        "(and (>= X_0 0.0) (<= X_0 0.05) (>= Y_1 Y_0)) "
                        "(and (>= X_0 0.0) (<= X_0 0.07) (<= X_0 0.05) (>= Y_2 Y_0)) "  # the same box as the first
                        "(and (>= X_0 0.0) (>= X_1 0.2) (>= Y_2 Y_0)) "  # X_1 in [0.2, 0.1]: empty
                        "(and (>= X_0 -1.0) (>= Y_1 Y_2))))\n")
    assert [len(c.disjuncts) for c in prop.cases] == [2, 1]
    assert prop.cases[0].upper[0] == 0.05 and prop.cases[0].lower[0] == 0.0 and prop.cases[1].lower[0] == -1.0
    assert torch.equal(prop.cases[0].upper[1:], torch.full((11,), 0.1, dtype=torch.float64))
    with pytest.raises(InputError, match="X_0 has no finite lower"):  # one disjunct leaves X_0 unbounded below
        parse_vnnlib(head + "(assert (<= X_0 0.1))\n(assert (or (and (>= X_0 0.0) (>= Y_1 Y_0)) (>= Y_2 Y_0)))\n")


def test_huge_variable_indices_are_names_not_numbers_to_convert():
    """int() of a 5,000-digit index raised ValueError (Python's digit limit): the name is refused."""
    with pytest.raises(InputError, match=r"variable 'X_1{38}\.\.\.' is not named"):
        parse_vnnlib(BOX + "(declare-const X_" + "1" * 5000 + " Real)\n")


@pytest.mark.parametrize("sort", ["Int", "Bool", "(Array Int Real)"])
def test_variables_of_other_sorts_are_refused(sort):
    text = BOX.replace("(declare-const X_3 Real)", f"(declare-const X_3 {sort})")
    with pytest.raises(InputError, match="X_3 is declared of sort .*only Real"):
        parse_vnnlib(text, "p.vnnlib")


def test_cli_refuses_a_nan_property_instead_of_proving_it(tmp_path, run_cli):
    net = mlp_onnx(tmp_path / "net.onnx")
    spec = tmp_path / "nan.vnnlib"
    spec.write_text(BOX + "(assert (<= (- (* 1e300 1e300 Y_0) (* 1e300 1e300 Y_0)) Y_1))\n")
    res = tmp_path / "result.txt"
    r = run_cli("certify", "--model", net, "--spec", spec, "--result-file", res)
    assert "overflows double precision" in one_error_line(r)
    assert "holds" not in r.output and not res.exists()


# -- ONNX weights ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, build", [
    ("inf-bias", lambda p: _gemm(p, b=np.array([np.inf, 0, 0], np.float32))),  # was `holds (by ibp)`
    ("inf-weight", lambda p: _gemm(p, w=np.where(np.arange(36).reshape(3, 12) == 5, np.inf, W).astype(np.float32))),
    ("inf-scale", lambda p: _raw(p, [helper.make_node("Mul", ["x", "s"], ["xs"]), helper.make_node("Gemm", ["xs", "w"], ["y"], transB=1)],
                                 [tensor("s", np.full((1, 12), -np.inf, np.float32)), tensor("w", W)])),
    ("folded-nan", lambda p: _raw(p, [helper.make_node("Mul", ["i", "z"], ["n"]), helper.make_node("Gemm", ["x", "n"], ["y"], transB=1)],
                                  [tensor("i", np.full((3, 12), np.inf, np.float32)), tensor("z", np.zeros((3, 12), np.float32))])),
])
def test_infinite_weights_are_refused_by_certify(tmp_path, run_cli, name, build):
    net = build(tmp_path / f"{name}.onnx")
    spec = tmp_path / "p.vnnlib"
    spec.write_text(BOX)
    line = one_error_line(run_cli("certify", "--model", net, "--spec", spec, "--timeout", "20"))
    assert ("infinite values" if name != "folded-nan" else "NaN values") in line, line


def _normalised(path: Path, node, inits, opset: int = 13) -> Path:
    return _raw(path, [helper.make_node("Gemm", ["x", "w"], ["g"], transB=1), node], [tensor("w", W), *inits], opset=opset)


@pytest.mark.parametrize("var, eps, words", [(-1.0, 1e-5, "variance + epsilon is -0.99"), (-1e-5, 1e-5, "variance + epsilon is 0.0"),
                                             (1.0, float("nan"), "epsilon nan must be >= 0")])
def test_normalisations_that_divide_by_zero_or_a_negative_root_are_refused(tmp_path, var, eps, words):
    """These used to convert into a network of NaN / inf outputs, which the verifier answered `unknown`."""
    stats = [tensor(n, np.array(v, np.float32)) for n, v in (("s", [1, 1, 1]), ("b", [0, 0, 0]), ("m", [0, 0, 0]), ("v", [var, 1, 1]))]
    bn = helper.make_node("BatchNormalization", ["g", "s", "b", "m", "v"], ["y"], epsilon=eps)
    with pytest.raises(InputError, match=re.escape("BatchNormalization, node 1) is not supported: " + words)):
        onnx_to_torch(_normalised(tmp_path / "bn.onnx", bn, stats))
    ln = helper.make_node("LayerNormalization", ["g", "s", "b"], ["y"], epsilon=-1.0)
    with pytest.raises(InputError, match="epsilon -1.0 must be >= 0"):
        onnx_to_torch(_normalised(tmp_path / "ln.onnx", ln, stats[:2], opset=17))


def test_bfloat16_weights_are_read_exactly(tmp_path):
    """bfloat16 initializers (ml_dtypes arrays) used to be refused as "can't convert np.ndarray of type
    ml_dtypes.bfloat16"; every bfloat16 number is a float32 number, so they convert exactly."""
    bits = (W.view(np.uint32) >> 16).astype(np.uint16)  # W truncated to bfloat16
    w = TensorProto()
    w.name, w.data_type, w.raw_data = "w", TensorProto.BFLOAT16, bits.tobytes()
    w.dims.extend([3, 12])
    net = _raw(tmp_path / "bf16.onnx", [helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT),
                                        helper.make_node("Gemm", ["x", "wf"], ["y"], transB=1)], [w])
    exact = torch.from_numpy((bits.astype(np.uint32) << 16).view(np.float32))
    x = torch.randn(4, 12)
    with torch.no_grad():
        assert torch.allclose(onnx_to_torch(net).module(x), x @ exact.T, rtol=1e-6, atol=1e-6)


def test_infinite_clip_bound_is_still_a_clip(tmp_path):
    """Infinity as a bound (Clip max = inf) is no weight: the network converts and computes relu."""
    net = _raw(tmp_path / "clip.onnx", [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]), helper.make_node("Gemm", ["c", "w"], ["y"], transB=1)],
               [tensor("lo", np.array(0, np.float32)), tensor("hi", np.array(np.inf, np.float32)), tensor("w", W)])
    x = torch.randn(4, 12)
    with torch.no_grad():
        assert torch.allclose(onnx_to_torch(net).module(x), x.clamp(min=0) @ torch.from_numpy(W).T, atol=1e-6)


def test_a_box_beyond_the_network_precision_is_refused(tmp_path, run_cli):
    """X in [-1e300, 1e300] for a float32 network was `holds (by bab)` for a label that a float64 sample
    of the box violates 98% of the time (the box became +-inf in float32; NaN bounds read as proofs)."""
    spec = tmp_path / "wide.vnnlib"
    spec.write_text(vnnlib_box([-1e300] * 12, [1e300] * 12, 1, 3))
    line = one_error_line(run_cli("certify", "--model", mlp_onnx(tmp_path / "net.onnx"), "--spec", spec, "--timeout", "20"))
    assert "X_0 ranges over [-1e+300, 1e+300], beyond the largest float32 number" in line


@pytest.mark.parametrize("split", ["input", "relu"])
def test_overflowing_bounds_prove_nothing(split):
    """A float64 network whose hidden values overflow (weights 1e200 twice): ReLU branch and bound
    answered `holds` for all three labels at once (NaN margins counted as refuted), though a sample
    has label 0 on top at most points. Now branch and bound declines and nothing is proved."""
    from torch import nn

    from robustcli.certify.spec_verify import verify_property

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        model[0].weight.mul_(1e200)
        model[2].weight.mul_(1e200)
    for label in range(3):
        r = verify_property(model, parse_vnnlib(vnnlib_box([-1.0] * 4, [1.0] * 4, label, 3)), (4,), timeout=20, bab_split=split)
        assert r.status != "holds", (label, r.stages)
        assert "not finite" in r.stages[-1].get("note", ""), r.stages


def test_spec_refutation_needs_a_finite_lower_bound():
    from robustcli.certify.spec_verify import refuted

    (case,) = parse_vnnlib(HEAD + BOUNDS + "(assert (>= Y_1 Y_0))\n").cases
    low = torch.tensor([[float("inf")], [float("nan")], [0.5]], dtype=torch.float64)
    assert refuted(low, case)[:, 0].tolist() == [False, False, True]


# -- ONNX tensors that would exhaust memory -------------------------------------------------------


def _one(value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array([value], np.float32))


BOMBS = {
    "tile": ([helper.make_node("Tile", ["x", "r"], ["t"]), helper.make_node("Gemm", ["t", "w"], ["y"], transB=1)],
             [tensor("r", np.array([1, 1 << 30], np.int64)), tensor("w", W)], "output would have shape"),
    "pad": ([helper.make_node("Pad", ["x", "p"], ["t"]), helper.make_node("Gemm", ["t", "w"], ["y"], transB=1)],
            [tensor("p", np.array([0, 0, 0, 1 << 34], np.int64)), tensor("w", W)], "output would have shape"),
    "conv-transpose-stride": ([helper.make_node("Reshape", ["x", "s"], ["r"]),
                               helper.make_node("ConvTranspose", ["r", "k"], ["c"], strides=[1 << 16, 1 << 16]),
                               helper.make_node("Flatten", ["c"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)],
                              [tensor("s", np.array([1, 1, 3, 4], np.int64)), tensor("k", np.ones((1, 1, 1, 1), np.float32)), tensor("w", W)],
                              "output would have shape"),
    "folded-expand": ([helper.make_node("Expand", ["c", "s"], ["e"]), helper.make_node("Add", ["x", "e"], ["t"]),
                       helper.make_node("Gemm", ["t", "w"], ["y"], transB=1)],
                      [tensor("c", np.ones((1, 12), np.float32)), tensor("s", np.array([1 << 20, 1 << 20, 12], np.int64)), tensor("w", W)],
                      "constant output would have shape"),
    "folded-range": ([helper.make_node("Range", ["a", "b", "d"], ["r"]), helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
                     [tensor("a", np.array(0, np.int64)), tensor("b", np.array(1 << 40, np.int64)), tensor("d", np.array(1, np.int64)), tensor("w", W)],
                     "constant output would have shape"),
    "folded-broadcast": ([helper.make_node("Add", ["c1", "c2"], ["r"]), helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
                         [tensor("c1", np.ones((1 << 16, 1), np.float32)), tensor("c2", np.ones((1, 1 << 16), np.float32)), tensor("w", W)],
                         "constant output would have shape"),
    "folded-matmul": ([helper.make_node("ConstantOfShape", ["s"], ["c"], value=_one(1.0)), helper.make_node("MatMul", ["c", "c"], ["cc"]),
                       helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
                      [tensor("s", np.array([1, 4096, 4096], np.int64)), tensor("w", W)], "multiply-adds"),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_tensors_past_the_size_limit_are_refused_before_they_are_built(tmp_path, name):
    nodes, inits, words = BOMBS[name]
    with pytest.raises(InputError, match=words):
        onnx_to_torch(_raw(tmp_path / f"{name}.onnx", nodes, inits))


def test_a_sparse_initializer_is_named(tmp_path):
    """It used to read as "input 'w' is not computed before it (graph not sorted?)"."""
    values, index = numpy_helper.from_array(np.array([1.0], np.float32), "w"), numpy_helper.from_array(np.array([0], np.int64), "i")
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              sparse_initializer=[helper.make_sparse_tensor(values, index, [3, 12])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    with pytest.raises(InputError, match="stores 'w' as a sparse initializer"):
        onnx_to_torch(model)


def test_outputs_without_a_gradient_are_attacked_not_crashed(tmp_path, run_cli):
    """A comparison cast to float as the output: the property attack took the gradient of a tensor
    without one (RuntimeError traceback, exit 1). Its starts are still checked, and one violates."""
    net = _raw(tmp_path / "step.onnx", [helper.make_node("Gemm", ["x", "w"], ["g"], transB=1), helper.make_node("Greater", ["g", "z"], ["b"]),
                                        helper.make_node("Cast", ["b"], ["y"], to=TensorProto.FLOAT)],
               [tensor("w", W), tensor("z", np.zeros(3, np.float32))])
    spec = tmp_path / "p.vnnlib"
    spec.write_text(BOX)
    r = run_cli("certify", "--model", net, "--spec", spec, "--counterexample", tmp_path / "ce")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert "result: violated (by attack)" in r.output and "confirmed by onnxruntime" in r.output


def test_an_opset_from_the_future_is_refused(tmp_path, run_cli):
    """Operator semantics change across opsets; one this tool's onnx does not know is not guessed."""
    spec = tmp_path / "p.vnnlib"
    spec.write_text(BOX)
    line = one_error_line(run_cli("certify", "--model", _gemm(tmp_path / "future.onnx", opset=99), "--spec", spec))
    assert "opset 99" in line and "export it with opset" in line


# -- outputs that would destroy inputs, file-system failures, worker counts ----------------------


@pytest.fixture()
def bench(tmp_path) -> Path:
    mlp_onnx(tmp_path / "net.onnx")
    (tmp_path / "p.vnnlib").write_text(BOX)
    (tmp_path / "i.csv").write_text("net.onnx,p.vnnlib,10\n")
    return tmp_path


@pytest.mark.parametrize("flag, target", [("--counterexample", "p.vnnlib"), ("--result-file", "net.onnx"), ("--result-file", "ce")])
def test_certify_outputs_never_overwrite_the_inputs(bench, run_cli, flag, target):
    before = {p.name: p.read_bytes() for p in bench.iterdir()}
    args = ["certify", "--model", bench / "net.onnx", "--spec", bench / "p.vnnlib", "--counterexample", bench / "ce", flag, bench / target]
    line = one_error_line(run_cli(*args))
    assert f"{flag} {bench / target} is the" in line and "another file" in line
    assert {p.name: p.read_bytes() for p in bench.iterdir()} == before


@pytest.mark.parametrize("flag, target", [("--out", "i.csv"), ("--json", "net.onnx"), ("--out", "p.vnnlib")])
def test_vnncomp_outputs_never_overwrite_the_inputs(bench, run_cli, flag, target):
    before = {p.name: p.read_bytes() for p in bench.iterdir()}
    line = one_error_line(run_cli("vnncomp", bench / "i.csv", flag, bench / target))
    assert "one of the benchmark's input files" in line
    assert {p.name: p.read_bytes() for p in bench.iterdir()} == before


def test_vnncomp_results_file_on_a_read_only_disk_is_one_line(bench, run_cli, monkeypatch):
    """Simulated (the tests run as root, which ignores folder permissions)."""
    import errno
    import os

    import robustcli.commands.vnncomp as command

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(command, "open", read_only, raising=False)
    line = one_error_line(run_cli("vnncomp", bench / "i.csv", "--out", bench / "r.csv"))
    assert line == f"error: cannot write {bench / 'r.csv'}: the file system is read-only"
    assert not (bench / "r_counterexamples").exists()


def test_a_folder_named_as_a_network_is_not_a_missing_file(bench, run_cli):
    (bench / "d.onnx").mkdir()
    (bench / "i.csv").write_text("d.onnx,p.vnnlib,10\n")
    assert "d.onnx is not a regular file" in one_error_line(run_cli("vnncomp", bench / "i.csv"))


def test_worker_processes_are_capped_by_instances_and_cores(bench, monkeypatch):
    from robustcli.certify import vnncomp

    asked = []

    class NoPool:
        def __init__(self, workers, **kw):
            asked.append(workers)
            raise RuntimeError("stop")

    monkeypatch.setattr(vnncomp, "ProcessPoolExecutor", NoPool)
    monkeypatch.setattr(vnncomp.os, "cpu_count", lambda: 4)
    insts = vnncomp.read_instances(bench / "i.csv") * 3
    for jobs, workers in ((100_000, 3), (2, 2)):
        with pytest.raises(RuntimeError, match="stop"):
            vnncomp.run_benchmark(insts, jobs=jobs, methods=("attack",))
        assert asked.pop() == workers
    monkeypatch.setattr(vnncomp.os, "cpu_count", lambda: 1)  # one core: in this process, no pool
    assert [r.result for r in vnncomp.run_benchmark(insts[:1], jobs=8, methods=("attack",))] == ["violated"]
