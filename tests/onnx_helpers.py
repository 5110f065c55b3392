"""Small ONNX graphs built with onnx.helper for the onnx tests (no shared data needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

onnx = __import__("pytest").importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def tensor(name: str, a: np.ndarray):
    return numpy_helper.from_array(np.asarray(a), name)


def save(path: Path, nodes, inits, in_shape, out_shape, in_name="x", out_name="y", opset=13) -> Path:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, list(out_shape))],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def mlp_onnx(path: Path, sizes=(12, 16, 16, 3), seed: int = 0) -> Path:
    """Input (1, 12, 1) (VNN-COMP style) -> Flatten -> Gemm/ReLU ... -> Gemm."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Flatten", ["x"], ["h0"], axis=1)]
    inits = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (rng.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32)
        bias = (0.1 * rng.standard_normal(b)).astype(np.float32)
        inits += [tensor(f"w{i}", w), tensor(f"b{i}", bias)]
        last = i == len(sizes) - 2
        out = "y" if last else f"z{i}"
        nodes.append(helper.make_node("Gemm", [f"h{i}", f"w{i}", f"b{i}"], [out], transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"h{i + 1}"]))
    return save(path, nodes, inits, (1, sizes[0], 1), (1, sizes[-1]))


def vnnlib_box(lower, upper, label: int, n_out: int, extra_outputs: str | None = None) -> str:
    """A VNN-COMP style robustness property: violated iff some other output >= the label's."""
    lines = [f"(declare-const X_{i} Real)" for i in range(len(lower))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, (lo, hi) in enumerate(zip(lower, upper)):
        lines += [f"(assert (<= X_{i} {float(hi)!r}))", f"(assert (>= X_{i} {float(lo)!r}))"]
    if extra_outputs is None:
        ors = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(n_out) if j != label)
        lines.append(f"(assert (or {ors}))")
    else:
        lines.append(extra_outputs)
    return "\n".join(lines) + "\n"
