"""ONNX -> PyTorch for feed-forward classifiers (the VNN-COMP op set), without onnx2torch.

`onnx_to_torch(path)` reads the graph with the `onnx` package and returns an equivalent module:
an `nn.Sequential` of standard layers (Flatten, Linear, Conv2d, BatchNorm1d/2d, ReLU) when the
graph is a chain, so bound engines can walk it, else an `OnnxGraph` that runs the nodes in order.

Supported: Gemm, MatMul, Add, Sub, Mul, Div, Relu, Flatten, Reshape, Conv (2-D), BatchNormalization
(inference), Constant, Identity, Transpose that keeps the batch axis first (a reshape when it only
moves size-1 axes, else a `Permute`: NHWC inputs moved to NCHW), and constant folding
of Shape/Gather/Unsqueeze/Squeeze/Concat/Cast as exporters emit for `x.view(x.size(0), -1)`; and,
for attacks (forward and backward passes only), pooling, Concat, Pad, the common activations, Mul
of two computed tensors (GELU as exporters before opset 20 write it, x * 0.5 * (1 + erf(x / sqrt
2))), elementwise functions (Abs, Neg, Exp, Log, Sqrt, Reciprocal, Pow, Min, Max, Sum, Mean, PRelu,
Where with a constant condition), reductions over non-batch axes (ReduceMean, ReduceSum, ...),
normalisations computed per point (LayerNormalization, InstanceNormalization,
GroupNormalization), MatMul of two computed tensors (attention), ConvTranspose, Resize, Expand,
Tile and Gather with constant indices, each as the torch module of the same function
(`supported_operators()` lists them). Anything else is an `InputError` naming the node.

Exactly ONNX's semantics, per opset where they changed: Softmax before opset 13 normalises the
axes from `axis` on together; Reduce* take their axes as an attribute before opset 18 (13 for
ReduceSum) and as an input after; GroupNormalization's scale and bias are per group at opset 18
and per channel at 21. Division by a computed tensor (Div, Reciprocal) is accepted only where the
divisor is positive by construction in exact arithmetic (exp, sigmoid, softplus, softmax,
sqrt(variance + eps), max(norm, eps): a small sign analysis over the nodes), as in the
normalisations exporters decompose; a divisor that can be zero is refused by name.

x * sigmoid(x) (SiLU as every exporter writes it) and x * hardsigmoid(x) with torch's constants
(Hardswish before opset 14) become one nn.SiLU / nn.Hardswish layer where the gate is read by the
product alone: the same function computed the same way, so a chain stays a chain of standard
layers that native CROWN bounds (certify/activation_lines.py) instead of a product of two
computed tensors, which no bound engine reads.

Choices (the ONNX spec leaves the batch open): the first axis of the graph input is the batch. A
file that fixes it to 1 (as VNN-COMP's do) still accepts any batch: Reshape targets that repeat
the fixed batch size keep the batch axis instead. The conversion runs the module on a batch of
two and on each point alone and refuses a graph whose rows influence each other. Where that
batch-first reading fails on a file that fixes its batch to 1 (torch's nn.MultiheadAttention
export transposes to (tokens, batch, features) and merges batch and heads), the graph is read
literally for its one point and run on each point of a batch (`PerPoint`, vectorised with
torch.func.vmap): exactly the file's computation for a batch of one, for attacks; the bound
engines do not read such a module. A file with a symbolic batch keeps the refusal: there the
axis moves would really mix points.

Precision: the module computes in one dtype, float32 by default (attacks, training). Bound
engines need the file's own numbers, since a bound proved for weights rounded to float32 is not
a bound for a float64 file (a margin of -1e-9 rounds to +1e-9 as easily as not), so
`onnx_to_torch(path, dtype=None)` keeps the file's precision: a float64 module whose parameters
and constants are the file's float64 numbers bit for bit when the file holds any float64 number
(`file_float_dtype`; that includes files that cast a float32 input to double before float64
weights), else float32. Integer and boolean constants stay as they are. A Cast between floating
types of a computed tensor is the identity: the module does not model the file's rounding of
intermediate values, in either precision.
"""

from __future__ import annotations

import copy
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustcli.certify.onnx_layers import (
    Binary, Clip, Concat, ElementwiseAffine, Erf, Expand, FlatSoftmax, Gather, MatMul, OnnxGraph, Pad, Permute, PerPoint,
    Pointwise, PReLU, Reduce, Reshape, Resize, Slice, ToFloat, Transpose, UNARY, View,
)
from robustcli.core.errors import InputError, first_line

SELU_ALPHA, SELU_GAMMA = 1.6732632423543772, 1.0507009873554805  # ONNX's (and torch's) SELU constants

ELEMENTWISE = {"Add", "Sub", "Mul", "Div"}
# Nodes whose inputs are all constants (shape arithmetic, masks, weights built in the graph), folded
# with numpy's function of the same ONNX semantics.
FOLD_FUNCTIONS = {
    "Neg": np.negative, "Abs": np.abs, "Sqrt": np.sqrt, "Exp": np.exp, "Log": np.log, "Reciprocal": np.reciprocal,
    "Pow": lambda a, b: np.power(a, b).astype(a.dtype), "Equal": np.equal, "Less": np.less, "Greater": np.greater,
    "LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal, "Not": np.logical_not, "And": np.logical_and,
    "Or": np.logical_or, "Floor": np.floor, "Ceil": np.ceil, "MatMul": np.matmul, "Sin": np.sin, "Cos": np.cos,
    "Round": np.round, "Sign": np.sign,  # np.round rounds half to even, as ONNX Round
}


@dataclass
class OnnxConversion:
    module: nn.Module
    input_shape: tuple[int, ...]  # per point, without the batch axis
    output_shape: tuple[int, ...]
    input_name: str
    chain: bool  # True when `module` is an nn.Sequential of standard layers
    file_dtype: torch.dtype = torch.float32  # float64 when the file holds float64 numbers (`file_float_dtype`)


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise InputError(
            "reading .onnx models needs the `onnx` package: pip install 'robustcli[onnx]' (or pip install onnx)"
        ) from None
    return onnx


MAX_ONNX_BYTES = 2 << 30  # protobuf's own limit on a serialised message


def onnx_bytes(path: str | Path) -> bytes:
    """The file's bytes, gunzipped for `.onnx.gz` (how VNN-COMP 2022+ ships networks)."""
    import gzip

    path = Path(path)
    if path.exists() and not path.is_file():
        raise InputError(f"{path} is not a regular file (a folder, device or FIFO); pass an .onnx file")
    try:
        if path.suffix != ".gz":
            return path.read_bytes()
        with gzip.open(path, "rb") as f:
            data = f.read(MAX_ONNX_BYTES + 1)  # bounded: a gzip bomb stops here
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    if len(data) > MAX_ONNX_BYTES:
        raise InputError(f"{path} unpacks to more than {MAX_ONNX_BYTES >> 30} GiB, the most an ONNX protobuf can hold")
    return data


def load_onnx(path: str | Path) -> Any:
    onnx = _require_onnx()
    path = Path(path)
    try:
        model = onnx.load_model_from_string(onnx_bytes(path))
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            # weights in a side file (`net.onnx.data`, what torch.onnx.export writes by default)
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(model, str(path.parent))
        onnx.checker.check_model(model)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - protobuf or checker failure: a bad file
        # The checker spreads one sentence over lines ("... input 'b' of node:\nname: ... OpType: Add\n is
        # not output of any previous nodes."): joined, it stays one line and says which node.
        said = " ".join(str(e).split())
        said = (said[:300] + " ...") if len(said) > 300 else (said or type(e).__name__)
        raise InputError(f"cannot read {path.name} as an ONNX model: {said}") from None
    return model


def file_float_dtype(model: Any) -> torch.dtype:
    """torch.float64 when the file holds float64 numbers (a double input, initializer or Constant,
    or a Cast to double), else torch.float32 (float32 and float16 files: float32 holds them exactly)."""
    from onnx import TensorProto

    double = TensorProto.DOUBLE
    graph = model.graph
    if any(i.type.tensor_type.elem_type == double for i in graph.input):
        return torch.float64
    if any(t.data_type == double for t in graph.initializer):
        return torch.float64
    for node in graph.node:
        for a in node.attribute:
            if node.op_type == "Constant" and a.name == "value" and a.t.data_type == double:
                return torch.float64
            if node.op_type == "Cast" and a.name == "to" and a.i == double:
                return torch.float64
    return torch.float32


class _Converter:
    def __init__(self, model: Any, dtype: torch.dtype, per_point: bool = False):
        from onnx import numpy_helper

        self.dtype = dtype  # of the module's parameters, buffers and computed values
        # True: the graph is read literally for a batch of one (the file fixes it to 1) and run on each
        # point by `PerPoint`; reshapes and transposes may then move the first axis.
        self.per_point = per_point

        self.numpy_helper = numpy_helper
        graph = model.graph
        self.graph = graph
        if len(graph.sparse_initializer):
            raise InputError(f"the ONNX graph stores {graph.sparse_initializer[0].values.name!r} as a sparse initializer, "
                             "which this tool does not read; save the model with dense initializers")
        for t in graph.initializer:  # declared sizes are checked before numpy allocates them
            _check_dims(list(t.dims), f"ONNX initializer {t.name!r}", allow_zero=True)
        try:
            self.consts: dict[str, torch.Tensor] = {
                t.name: torch.from_numpy(_torch_readable(np.array(numpy_helper.to_array(t)))) for t in graph.initializer
            }
        except Exception as e:  # noqa: BLE001 - data that does not match its declared dims or type
            raise InputError(f"an ONNX initializer cannot be read: {first_line(e)}") from None
        for name, t in self.consts.items():  # infinities have uses (Clip bounds, masks); NaN has none
            if t.is_floating_point() and bool(torch.isnan(t).any()):
                raise InputError(f"the ONNX initializer {name!r} holds NaN values; the model cannot be evaluated")
        inputs = [i for i in graph.input if i.name not in self.consts]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise InputError(
                f"the ONNX graph has {len(inputs)} inputs and {len(graph.output)} outputs; "
                "a classifier needs exactly one of each"
            )
        self.input_name = inputs[0].name
        self.output_name = graph.output[0].name
        dims = inputs[0].type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if len(shape) < 2:
            raise InputError(f"the ONNX input {self.input_name!r} has shape {shape}; expected a batch axis first")
        if any(s is None for s in shape[1:]):
            raise InputError(f"the ONNX input {self.input_name!r} has symbolic dimensions {shape}; only the batch may be")
        if shape[0] is not None and shape[0] < 0:
            raise InputError(f"the ONNX input {self.input_name!r} declares a negative batch size {shape[0]}")
        self.batch = shape[0] or 1
        if per_point and shape[0] != 1:
            raise InputError(f"the ONNX input {self.input_name!r} does not fix its batch to 1")
        _check_dims([self.batch, *shape[1:]], f"the ONNX input {self.input_name!r}", allow_zero=False)
        self.input_shape = tuple(int(s) for s in shape[1:])
        # Shapes of computed tensors, traced with a zero input of the file's batch size.
        self.values: dict[str, torch.Tensor] = {
            self.input_name: torch.zeros(self.batch, *self.input_shape, dtype=self.dtype)}
        self.steps: list[tuple[nn.Module, list[str], str]] = []
        # The default domain's opset: attributes moved to inputs and semantics changed across opsets.
        self.opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)
        newest = _require_onnx().defs.onnx_opset_version()
        if self.opset > newest:  # operator semantics of an opset this tool has never seen: unknown
            raise InputError(f"the ONNX file imports opset {self.opset} of the default domain, newer than the {newest} "
                             f"this tool knows; export it with opset {newest} or lower")
        # How often each tensor is read (by nodes and as the graph output): a pattern may be fused only
        # where its inner values are read by nothing else.
        self.uses: dict[str, int] = {}
        for n in [*(x for node in graph.node for x in node.input), self.output_name]:
            self.uses[n] = self.uses.get(n, 0) + 1
        self.node: tuple[int, Any] = (-1, graph)  # the node being converted (its index and proto)
        self.signs: dict[str, str] = {}  # "pos" / "nonneg": computed tensors of that sign in exact arithmetic
        self.gates: dict[str, tuple[str, str]] = {}  # sigmoid-like output -> (fused layer, its input)

    # -- helpers ------------------------------------------------------------------------------
    def fail(self, i: int, node: Any, why: str) -> InputError:
        name = f"'{node.name}' " if node.name else ""
        return InputError(f"ONNX node {name}({node.op_type}, node {i}) is not supported: {why}")

    def attrs(self, node: Any) -> dict[str, Any]:
        from onnx import helper

        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def const(self, name: str) -> torch.Tensor | None:
        return self.consts.get(name)

    def add(self, module: nn.Module, ins: list[str], out: str) -> None:
        module.eval()
        args = [self.values[i] for i in ins]
        shape = None if type(module).__module__ in _SHAPE_KEEPING else _meta_shape(module, args)
        if shape is not None and math.prod(shape) > MAX_DECLARED_ELEMENTS:
            raise self.fail(*self.node, f"its output would have shape {list(shape)} ({math.prod(shape):,} elements), "
                            f"more than the {MAX_DECLARED_ELEMENTS:,} allowed")
        with torch.no_grad():
            self.values[out] = module(*args)
        self.steps.append((module, ins, out))

    # -- conversion ----------------------------------------------------------------------------
    def run(self) -> list[tuple[nn.Module, list[str], str]]:
        for i, node in enumerate(self.graph.node):
            inputs = [n for n in node.input if n != ""]
            if all(n in self.consts for n in inputs) and node.op_type != "Shape":
                self.fold(i, node, inputs)
                continue
            handler = getattr(self, f"op_{node.op_type}", None) if node.domain in ("", "ai.onnx") else None
            if handler is None:
                domain = f" of domain {node.domain!r}" if node.domain not in ("", "ai.onnx") else ""
                raise self.fail(i, node, f"operator {node.op_type}{domain} is outside the supported feed-forward set "
                                f"({', '.join(supported_operators())})")
            missing = [n for n in inputs if n not in self.consts and n not in self.values]
            if missing:
                raise self.fail(i, node, f"input {missing[0]!r} is not computed before it (graph not sorted?)")
            self.node = (i, node)  # for add()'s refusals
            self._check_finite_constants(i, node, inputs)
            a = self.attrs(node)
            if "epsilon" in a and not float(a["epsilon"]) >= 0:  # sqrt(var + eps) of a constant row: NaN
                raise self.fail(i, node, f"epsilon {a['epsilon']!r} must be >= 0")
            handler(i, node, inputs, a)
            sign = self._output_sign(node, inputs, a)
            if sign is not None:
                self.signs[node.output[0]] = sign
        if self.output_name not in self.values:
            raise InputError(f"the ONNX output {self.output_name!r} is not computed from the input")
        return self.steps

    def _check_finite_constants(self, i: int, node: Any, inputs: list[str]) -> None:
        """Refuse a constant operand holding NaN, or inf outside the ops where infinity is a bound or a
        mask value: an infinite weight makes outputs inf or NaN (inf * 0) and bound arithmetic inf - inf,
        so nothing certified about it would mean anything."""
        for n in inputs:
            t = self.consts.get(n)
            if t is None or not t.is_floating_point() or bool(torch.isfinite(t).all()):
                continue
            if bool(torch.isnan(t).any()):
                raise self.fail(i, node, f"its constant operand {n!r} holds NaN values; the model cannot be evaluated")
            if node.op_type not in INFINITY_OPERANDS:
                raise self.fail(i, node, f"its constant operand {n!r} holds infinite values; a network with infinite "
                                "weights cannot be evaluated or bounded (re-export it with finite weights)")

    def fold(self, i: int, node: Any, inputs: list[str]) -> None:
        """Evaluate a node whose inputs are all constants (weights transposed by a node, shape arithmetic)."""
        a = self.attrs(node)
        x = [self.consts[n].numpy() for n in inputs]
        op = node.op_type
        self._check_fold_size(i, node, op, x)
        try:
            if op == "Constant":
                out = self._constant_value(a)
            elif op == "Identity":
                out = x[0]
            elif op in ELEMENTWISE:
                out = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}.get(op, np.divide)(x[0], x[1])
                if op == "Div" and np.issubdtype(x[0].dtype, np.integer):  # ONNX truncates toward zero
                    out = (np.sign(x[0]) * np.sign(x[1]) * (np.abs(x[0]) // np.abs(x[1]))).astype(x[0].dtype)
            elif op in FOLD_FUNCTIONS:
                out = FOLD_FUNCTIONS[op](*x)
            elif op == "Expand":
                out = np.broadcast_to(x[0], np.broadcast_shapes(x[0].shape, tuple(int(d) for d in x[1].tolist()))).copy()
            elif op == "Tile":
                out = np.tile(x[0], [int(r) for r in x[1].tolist()])
            elif op == "Where":
                out = np.where(x[0], x[1], x[2])
            elif op in ("Max", "Min", "Sum"):
                out = x[0]
                for y in x[1:]:
                    out = {"Max": np.maximum, "Min": np.minimum, "Sum": np.add}[op](out, y)
            elif op == "Range":
                out = np.arange(x[0].item(), x[1].item(), x[2].item(), dtype=x[0].dtype)
            elif op == "Mod":  # fmod=0: the sign of the divisor (numpy's mod), fmod=1: of the dividend
                out = (np.fmod if a.get("fmod", 0) else np.mod)(x[0], x[1])
            elif op == "Size":
                out = np.array(x[0].size, dtype=np.int64)
            elif op == "Transpose":
                out = np.transpose(x[0], a.get("perm"))
            elif op == "Reshape":
                out = x[0].reshape([d if d != 0 else x[0].shape[j] for j, d in enumerate(x[1].tolist())])
            elif op == "Gather":
                out = np.take(x[0], x[1], axis=a.get("axis", 0))
            elif op == "Unsqueeze":
                axes = a.get("axes", x[1].tolist() if len(x) > 1 else None)
                out = np.expand_dims(x[0], tuple(axes))
            elif op == "Squeeze":
                axes = a.get("axes", x[1].tolist() if len(x) > 1 else None)
                out = np.squeeze(x[0], tuple(axes) if axes is not None else None)
            elif op == "Concat":
                out = np.concatenate(x, axis=a["axis"])
            elif op == "ConstantOfShape":
                v = np.array(self.numpy_helper.to_array(a["value"])).reshape(-1) if "value" in a else np.zeros(1, np.float32)
                shape = [int(t) for t in np.asarray(x[0]).reshape(-1).tolist()]
                _check_dims(shape, f"ONNX node {node.name!r} (ConstantOfShape, node {i})", allow_zero=True)  # before numpy allocates it
                out = np.full(tuple(shape), v[0], dtype=v.dtype)
            elif op == "Slice":
                sl = [slice(None)] * x[0].ndim
                for ax, st, en, sp in self._slice_params(node, inputs, a, x[0].ndim):
                    sl[ax] = slice(st, en, sp)
                out = x[0][tuple(sl)]
            elif op == "Cast":
                from onnx import helper

                out = x[0].astype(helper.tensor_dtype_to_np_dtype(a["to"]))
            else:
                raise ValueError(f"operator {op} on constants is outside the supported set")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise self.fail(i, node, str(e)) from None
        self.consts[node.output[0]] = torch.from_numpy(_torch_readable(np.array(out)))

    def _check_fold_size(self, i: int, node: Any, op: str, x: list[np.ndarray]) -> None:
        """Refuse a folded constant past MAX_DECLARED_ELEMENTS (or a constant MatMul past MAX_FOLD_PRODUCTS
        multiply-adds) from its inputs' shapes, before numpy allocates or computes it."""
        try:
            if op == "Expand":
                shape = np.broadcast_shapes(x[0].shape, tuple(int(d) for d in x[1].reshape(-1).tolist()))
            elif op == "Tile":
                shape = tuple(int(d) * int(r) for d, r in zip(x[0].shape, x[1].reshape(-1).tolist()))
            elif op == "Range":
                start, limit, delta = (float(v.item()) for v in x[:3])
                shape = (max(math.ceil((limit - start) / delta), 0),) if delta else (0,)
            elif op == "MatMul" and len(x) == 2 and x[0].ndim and x[1].ndim:
                batch = math.prod(np.broadcast_shapes(x[0].shape[:-2], x[1].shape[:-2]))
                rows, cols = (x[0].shape[-2] if x[0].ndim > 1 else 1), (x[1].shape[-1] if x[1].ndim > 1 else 1)
                products = batch * rows * x[0].shape[-1] * cols
                if products > MAX_FOLD_PRODUCTS:
                    raise self.fail(i, node, f"multiplying constants of shapes {list(x[0].shape)} and {list(x[1].shape)} "
                                    f"takes {products:,} multiply-adds, more than the {MAX_FOLD_PRODUCTS:,} allowed")
                return
            elif len(x) > 1:
                shape = np.broadcast_shapes(*(v.shape for v in x))
            else:
                return
        except (ValueError, TypeError, OverflowError):
            return  # shapes that do not combine: the operation itself says so
        if math.prod(shape) > MAX_DECLARED_ELEMENTS:
            raise self.fail(i, node, f"its constant output would have shape {list(shape)} ({math.prod(shape):,} "
                            f"elements), more than the {MAX_DECLARED_ELEMENTS:,} allowed")

    def _constant_value(self, a: dict[str, Any]) -> np.ndarray:
        """A Constant node's value: a tensor, or (opset >= 12) one float / int or a list of them."""
        if "value" in a:
            return np.array(self.numpy_helper.to_array(a["value"]))
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                           ("value_ints", np.int64)):
            if key in a:
                return np.array(a[key], dtype=dtype)
        raise ValueError(f"Constant nodes with {', '.join(a) or 'no value'} are not supported (only value, value_float(s), value_int(s))")

    def _slice_params(self, node, inputs, a, rank: int) -> list[tuple[int, int, int, int]]:
        """(axis, start, end, step) per sliced axis, from inputs (opset >= 10) or attributes (before)."""
        def given(k: int, attr: str):
            if len(inputs) > k:
                if inputs[k] not in self.consts:
                    raise ValueError(f"the Slice {attr} must be constants")
                return self.consts[inputs[k]].reshape(-1).tolist()
            return a.get(attr)

        starts, ends = given(1, "starts"), given(2, "ends")
        if starts is None or ends is None:
            raise ValueError("Slice needs starts and ends")
        axes = given(3, "axes") or list(range(len(starts)))
        steps = given(4, "steps") or [1] * len(starts)
        return [(int(ax) % rank, int(st), int(en), int(sp)) for ax, st, en, sp in zip(axes, starts, ends, steps)]

    def op_Slice(self, i, node, inputs, a) -> None:
        """A Slice of a computed tensor (nn4sys-style models cut their input into parts): a `Slice` layer."""
        x = self.values[inputs[0]]
        try:
            ranges = self._slice_params(node, inputs, a, x.dim())
        except ValueError as e:
            raise self.fail(i, node, str(e)) from None
        if any(ax == 0 for ax, *_ in ranges):
            raise self.fail(i, node, "slicing the batch axis")
        if any(sp <= 0 for *_, sp in ranges):
            raise self.fail(i, node, "a negative step (reversal)")
        ranges = [(ax, *slice(st, en, sp).indices(x.shape[ax])) for ax, st, en, sp in ranges]  # ONNX clamps like Python
        self.add(Slice(tuple(ranges)), inputs[:1], node.output[0])

    def op_Split(self, i, node, inputs, a) -> None:
        """Split of a computed tensor along a non-batch axis: one `Slice` per output."""
        x = self.values[inputs[0]]
        axis = int(a.get("axis", 0)) % x.dim()
        if axis == 0:
            raise self.fail(i, node, "splitting the batch axis")
        if len(inputs) > 1 and inputs[1] not in self.consts:
            raise self.fail(i, node, "the split sizes must be a constant")
        sizes = self.consts[inputs[1]].reshape(-1).tolist() if len(inputs) > 1 else a.get("split")
        n = len(node.output)
        if not sizes:
            if x.shape[axis] % n:
                raise self.fail(i, node, f"axis of size {x.shape[axis]} does not split into {n} equal parts")
            sizes = [x.shape[axis] // n] * n
        if len(sizes) != n or sum(sizes) != x.shape[axis]:
            raise self.fail(i, node, f"split sizes {sizes} do not cover the axis of size {x.shape[axis]} in {n} outputs")
        begin = 0
        for size, out in zip(sizes, node.output):
            self.add(Slice(((axis, begin, begin + int(size), 1),)), inputs[:1], out)
            begin += int(size)

    def op_Shape(self, i, node, inputs, a) -> None:
        src = self.values.get(inputs[0])
        shape = list(src.shape) if src is not None else list(self.consts[inputs[0]].shape)
        start, end = int(a.get("start", 0)), a.get("end")  # opset 15: a slice of the shape
        shape = shape[start:] if end is None else shape[start:int(end)]
        self.consts[node.output[0]] = torch.tensor(shape, dtype=torch.int64)

    def op_Identity(self, i, node, inputs, a) -> None:
        self.values[node.output[0]] = self.values[inputs[0]]
        self.steps.append((nn.Identity(), inputs[:1], node.output[0]))

    def op_Relu(self, i, node, inputs, a) -> None:
        self.add(nn.ReLU(), inputs[:1], node.output[0])

    def _float(self, t: torch.Tensor) -> torch.Tensor:
        """A constant in the module's dtype: the file's own values when that is the file's precision
        (float64 -> float64 and float32 -> float64 are exact), rounded when float32 is asked of a
        float64 file."""
        return t.detach().to(self.dtype).clone()

    def op_Gemm(self, i, node, inputs, a) -> None:
        if len(inputs) < 2 or inputs[0] in self.consts or inputs[1] not in self.consts:
            raise self.fail(i, node, "only Gemm(input, constant weight[, constant bias]) is supported")
        if a.get("transA", 0):
            raise self.fail(i, node, "transA=1 would transpose the batch axis")
        if self.values[inputs[0]].dim() != 2:
            raise self.fail(i, node, f"Gemm input must be 2-D, got shape {tuple(self.values[inputs[0]].shape)}")
        w = self._float(self.consts[inputs[1]]) * float(a.get("alpha", 1.0))
        w = w if a.get("transB", 0) else w.t()
        out_f = w.shape[0]
        lin = nn.Linear(w.shape[1], out_f, bias=True, dtype=self.dtype)
        bias = torch.zeros(out_f, dtype=self.dtype)
        if len(inputs) > 2:
            c = self._float(self.consts[inputs[2]]) * float(a.get("beta", 1.0))
            try:
                bias = torch.broadcast_to(c, (1, out_f)).reshape(out_f).clone()
            except RuntimeError:
                raise self.fail(i, node, f"bias of shape {tuple(c.shape)} does not broadcast per output") from None
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(bias)
        self.add(lin, inputs[:1], node.output[0])

    def op_MatMul(self, i, node, inputs, a) -> None:
        """x @ W with a constant matrix: a Linear layer; for attacks also W @ x (W a constant matrix, x of
        rank >= 3) and the product of two computed tensors of equal rank >= 3 (attention), whose leading
        axis is a batch axis of torch.matmul, so points stay apart."""
        left, right = (self.consts.get(n) for n in inputs[:2])
        if left is None and right is None:
            ra, rb = self.values[inputs[0]].dim(), self.values[inputs[1]].dim()
            if (ra != rb or ra < 3) and not self.per_point:
                raise self.fail(i, node, f"MatMul of computed tensors of ranks {ra} and {rb}; only equal ranks >= 3 "
                                "(the batch axis a matmul batch axis) are supported")
            self.add(MatMul(), inputs[:2], node.output[0])
            return
        if left is not None and right is None and left.dim() == 2 and self.values[inputs[1]].dim() >= 3:
            self.add(MatMul(left=self._float(left)), inputs[1:2], node.output[0])
            return
        if left is not None or right.dim() != 2:
            raise self.fail(i, node, "only MatMul(input, constant 2-D matrix), MatMul(constant 2-D matrix, input of "
                            "rank >= 3) and MatMul of two computed tensors of equal rank >= 3 are supported")
        w = self._float(self.consts[inputs[1]])
        lin = nn.Linear(w.shape[0], w.shape[1], bias=False, dtype=self.dtype)
        with torch.no_grad():
            lin.weight.copy_(w.t())
        self.add(lin, inputs[:1], node.output[0])

    def _elementwise(self, i, node, inputs, a) -> None:
        op = node.op_type
        dyn = [n for n in inputs if n not in self.consts]
        if op == "Div" and inputs[1] in dyn:
            self._require_positive(i, node, inputs[1])
        if len(dyn) == 2:
            if op == "Mul" and (self._fuse_gate(inputs, node.output[0]) or self._fuse_gelu(inputs, node.output[0])):
                return
            if op == "Div":
                self._pointwise(i, node, inputs, "Div")
                return
            self.add(Binary(op), inputs, node.output[0])
            return
        c = self._float(self.consts[inputs[1] if inputs[0] in dyn else inputs[0]])
        x_shape = self.values[dyn[0]].shape
        try:
            out_shape = torch.broadcast_shapes(x_shape, c.shape)
        except RuntimeError:
            raise self.fail(i, node, f"constant of shape {tuple(c.shape)} does not broadcast to {tuple(x_shape)}") from None
        if tuple(out_shape) != tuple(x_shape) or (op == "Div" and inputs[0] not in dyn):
            self._pointwise(i, node, inputs, op)  # the constant widens each point, or c / x: attacks only
            return
        if c.dim() == len(x_shape) and c.shape[0] != 1 and not self.per_point:
            raise self.fail(i, node, "the constant varies along the batch axis")
        if c.dim() == len(x_shape) and not self.per_point:
            c = c[0]  # drop the batch axis so any batch size broadcasts
        const_first = inputs[0] not in dyn
        if op == "Add":
            m = ElementwiseAffine(None, c)
        elif op == "Sub":
            m = ElementwiseAffine(-torch.ones((), dtype=self.dtype), c) if const_first else ElementwiseAffine(None, -c)
        elif op == "Mul":
            m = ElementwiseAffine(c, None)
        else:
            m = ElementwiseAffine(1.0 / c, None)
        self.add(m, dyn, node.output[0])

    op_Add = op_Sub = op_Mul = op_Div = _elementwise

    def op_Flatten(self, i, node, inputs, a) -> None:
        x = self.values[inputs[0]]
        axis = a.get("axis", 1)
        axis = axis + x.dim() if axis < 0 else axis
        if self.per_point:
            self._reshape_to(i, node, x, [int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))], inputs[0])
            return
        if axis < 1 or any(s != 1 for s in x.shape[1:axis]):
            raise self.fail(i, node, f"Flatten axis={axis} on shape {tuple(x.shape)} would merge the batch axis")
        self.add(nn.Flatten(), inputs[:1], node.output[0])

    def _reshape_to(self, i, node, x: torch.Tensor, target: list[int], src: str) -> None:
        if self.per_point and tuple(target) != tuple(x.shape):
            self.add(View(tuple(target)), [src], node.output[0])
            return
        if target[0] != x.shape[0]:
            raise self.fail(i, node, f"reshape {tuple(x.shape)} -> {tuple(target)} merges the batch axis")
        target_t = tuple(target[1:])
        if target_t == tuple(x.shape[1:]):
            self.values[node.output[0]] = x
            self.steps.append((nn.Identity(), [src], node.output[0]))
        elif len(target_t) == 1 and x.dim() > 2:
            self.add(nn.Flatten(), [src], node.output[0])
        else:
            self.add(Reshape(target_t), [src], node.output[0])

    def op_Reshape(self, i, node, inputs, a) -> None:
        if inputs[1] not in self.consts:
            raise self.fail(i, node, "the target shape must be a constant")
        x = self.values[inputs[0]]
        spec = self.consts[inputs[1]].tolist()
        if a.get("allowzero", 0) and 0 in spec:
            raise self.fail(i, node, "allowzero=1 with a zero dimension")
        spec = [x.shape[j] if d == 0 else d for j, d in enumerate(spec)]
        try:
            target = list(torch.empty(x.shape).reshape(spec).shape)
        except RuntimeError as e:
            raise self.fail(i, node, str(e).splitlines()[0]) from None
        self._reshape_to(i, node, x, target, inputs[0])

    def op_Transpose(self, i, node, inputs, a) -> None:
        x = self.values[inputs[0]]
        perm = list(a.get("perm", reversed(range(x.dim()))))
        if sorted(perm) != list(range(x.dim())):
            raise self.fail(i, node, f"perm={perm} is not a permutation of the {x.dim()} axes of shape {tuple(x.shape)}")
        kept = [p for p in perm if x.shape[p] != 1]
        if self.per_point and perm[0] != 0:
            self.add(Transpose(tuple(perm)), inputs[:1], node.output[0])
        elif perm[0] == 0 and kept == sorted(kept):
            # moves only size-1 axes: a reshape, which keeps chain models chains of standard layers
            self._reshape_to(i, node, x, list(x.permute(perm).shape), inputs[0])
        elif perm[0] == 0:
            self.add(Permute(tuple(perm)), inputs[:1], node.output[0])  # e.g. an NHWC input moved to NCHW
        else:
            raise self.fail(i, node, f"Transpose perm={perm} on shape {tuple(x.shape)} moves the batch axis")

    def op_Conv(self, i, node, inputs, a) -> None:
        x = self.values[inputs[0]]
        if x.dim() == 3 and inputs[1] in self.consts and all(n in self.consts for n in inputs[2:3]):
            self._conv1d(i, node, inputs, a)
            return
        if x.dim() != 4 or inputs[1] not in self.consts or (len(inputs) > 2 and inputs[2] not in self.consts):
            raise self.fail(i, node, "only 1-D and 2-D convolutions with constant weights are supported")
        w = self._float(self.consts[inputs[1]])
        padding, source = self._conv_padding(i, node, inputs, a, x, w)
        groups = int(a.get("group", 1))
        conv = nn.Conv2d(
            w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=tuple(a.get("strides", [1, 1])),
            padding=padding, dilation=tuple(a.get("dilations", [1, 1])), groups=groups, bias=len(inputs) > 2,
            dtype=self.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(w)
            if len(inputs) > 2:
                conv.bias.copy_(self._float(self.consts[inputs[2]]))
        self.add(conv, [source], node.output[0])

    def _conv_padding(self, i, node, inputs, a, x: torch.Tensor, w: torch.Tensor) -> tuple[tuple[int, ...], str]:
        """The convolution's symmetric padding and the name of its input. Explicit pads or auto_pad
        SAME_UPPER / SAME_LOWER (output size ceil(input / stride); the odd pixel of padding at the end /
        the beginning, as Keras / tf2onnx files ask); padding that differs between the two ends of an axis
        becomes a zero `Pad` layer before a convolution without padding (for attacks: bound engines do not
        read Pad)."""
        n = x.dim() - 2
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        strides, dilations = list(a.get("strides", [1] * n)), list(a.get("dilations", [1] * n))
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            begins, ends = [], []
            for d in range(n):
                size, stride, k = x.shape[2 + d], strides[d], (w.shape[2 + d] - 1) * dilations[d] + 1
                total = max(0, (-(-size // stride) - 1) * stride + k - size)
                small, large = total // 2, total - total // 2
                begins.append(small if auto == "SAME_UPPER" else large)
                ends.append(large if auto == "SAME_UPPER" else small)
        elif auto in ("NOTSET", "VALID"):
            pads = [int(p) for p in a.get("pads", [0] * 2 * n)] if auto == "NOTSET" else [0] * 2 * n
            begins, ends = pads[:n], pads[n:]
        else:
            raise self.fail(i, node, f"auto_pad={auto!r}")
        if begins == ends:
            return tuple(begins), inputs[0]
        torch_pads: list[int] = []
        for d in reversed(range(n)):  # F.pad wants (last_begin, last_end, ...)
            torch_pads += [begins[d], ends[d]]
        padded = f"{node.output[0]}/pad"
        self.add(Pad(tuple(torch_pads), "constant", 0.0), inputs[:1], padded)
        return (0,) * n, padded

    def _conv1d(self, i, node, inputs, a) -> None:
        """A 1-D convolution (sequences, audio): nn.Conv1d, for attacks (the bound engines read Conv2d)."""
        w = self._float(self.consts[inputs[1]])
        padding, source = self._conv_padding(i, node, inputs, a, self.values[inputs[0]], w)
        groups = int(a.get("group", 1))
        conv = nn.Conv1d(w.shape[1] * groups, w.shape[0], int(w.shape[2]), stride=int(a.get("strides", [1])[0]),
                         padding=padding[0], dilation=int(a.get("dilations", [1])[0]), groups=groups,
                         bias=len(inputs) > 2, dtype=self.dtype)
        with torch.no_grad():
            conv.weight.copy_(w)
            if len(inputs) > 2:
                conv.bias.copy_(self._float(self.consts[inputs[2]]))
        self.add(conv, [source], node.output[0])

    def op_BatchNormalization(self, i, node, inputs, a) -> None:
        x = self.values[inputs[0]]
        if a.get("training_mode", 0) or len(node.output) > 1 or not all(n in self.consts for n in inputs[1:5]):
            raise self.fail(i, node, "only inference-mode BatchNormalization with constant statistics is supported")
        if x.dim() not in (2, 3, 4):
            raise self.fail(i, node, f"input of shape {tuple(x.shape)}")
        scale, bias, mean, var = (self._float(self.consts[n]) for n in inputs[1:5])
        eps = float(a.get("epsilon", 1e-5))
        bad = (~(var.double() + eps > 0)).nonzero().flatten()
        if len(bad):  # the layer divides by sqrt(var + eps): a NaN or infinite scale, not a normalisation
            raise self.fail(i, node, f"variance + epsilon is {float(var.reshape(-1)[bad[0]]) + eps!r} for channel "
                            f"{int(bad[0])}; it must be > 0")
        bn = (nn.BatchNorm2d if x.dim() == 4 else nn.BatchNorm1d)(x.shape[1], eps=eps, dtype=self.dtype)
        with torch.no_grad():
            bn.weight.copy_(scale)
            bn.bias.copy_(bias)
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
        self.add(bn, inputs[:1], node.output[0])


    # -- operations attacks need (forward and backward passes); the ReLU bound engines refuse the
    # non-piecewise-linear ones by name, auto_LiRPA's methods bound several of them.
    def _pool_args(self, i, node, a, x: torch.Tensor) -> tuple[tuple, tuple, tuple]:
        """(kernel, stride, padding) of 2-D pooling, or of 1-D pooling (for attacks) on a 3-D input."""
        if x.dim() not in (3, 4):
            raise self.fail(i, node, f"only 1-D and 2-D pooling is supported, got input shape {tuple(x.shape)}")
        n = x.dim() - 2
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise self.fail(i, node, f"auto_pad={a['auto_pad']!r}; export with explicit pads")
        k = tuple(a["kernel_shape"])
        pads = list(a.get("pads", [0] * 2 * n))
        if pads[:n] != pads[n:]:
            raise self.fail(i, node, f"asymmetric pads {pads}")
        if any(d != 1 for d in a.get("dilations", [1] * n)):
            raise self.fail(i, node, "dilated pooling")
        return k, tuple(a.get("strides", [1] * n)), tuple(pads[:n])

    def op_MaxPool(self, i, node, inputs, a) -> None:
        if len(node.output) > 1 and node.output[1]:
            raise self.fail(i, node, "the Indices output is not supported")
        x = self.values[inputs[0]]
        k, stride, pad = self._pool_args(i, node, a, x)
        pool = nn.MaxPool2d if x.dim() == 4 else nn.MaxPool1d
        self.add(pool(k, stride, pad, ceil_mode=bool(a.get("ceil_mode", 0))), inputs[:1], node.output[0])

    def op_AveragePool(self, i, node, inputs, a) -> None:
        x = self.values[inputs[0]]
        k, stride, pad = self._pool_args(i, node, a, x)
        pool = (nn.AvgPool2d if x.dim() == 4 else nn.AvgPool1d)(k, stride, pad, ceil_mode=bool(a.get("ceil_mode", 0)),
                                                                count_include_pad=bool(a.get("count_include_pad", 0)))
        self.add(pool, inputs[:1], node.output[0])

    def op_GlobalAveragePool(self, i, node, inputs, a) -> None:
        rank = self.values[inputs[0]].dim()
        if rank not in (3, 4):
            raise self.fail(i, node, "only 1-D and 2-D global pooling is supported")
        self.add(nn.AdaptiveAvgPool2d(1) if rank == 4 else nn.AdaptiveAvgPool1d(1), inputs[:1], node.output[0])

    def op_GlobalMaxPool(self, i, node, inputs, a) -> None:
        rank = self.values[inputs[0]].dim()
        if rank not in (3, 4):
            raise self.fail(i, node, "only 1-D and 2-D global pooling is supported")
        self.add(nn.AdaptiveMaxPool2d(1) if rank == 4 else nn.AdaptiveMaxPool1d(1), inputs[:1], node.output[0])

    def op_Sigmoid(self, i, node, inputs, a) -> None:
        self.add(nn.Sigmoid(), inputs[:1], node.output[0])
        self.gates[node.output[0]] = ("SiLU", inputs[0])

    def op_Tanh(self, i, node, inputs, a) -> None:
        self.add(nn.Tanh(), inputs[:1], node.output[0])

    def op_LeakyRelu(self, i, node, inputs, a) -> None:
        self.add(nn.LeakyReLU(float(a.get("alpha", 0.01))), inputs[:1], node.output[0])

    def op_Elu(self, i, node, inputs, a) -> None:
        self.add(nn.ELU(float(a.get("alpha", 1.0))), inputs[:1], node.output[0])

    def op_Celu(self, i, node, inputs, a) -> None:
        self.add(nn.CELU(float(a.get("alpha", 1.0))), inputs[:1], node.output[0])

    def op_Selu(self, i, node, inputs, a) -> None:
        alpha, gamma = float(a.get("alpha", SELU_ALPHA)), float(a.get("gamma", SELU_GAMMA))
        if abs(alpha - SELU_ALPHA) < 1e-6 and abs(gamma - SELU_GAMMA) < 1e-6:
            self.add(nn.SELU(), inputs[:1], node.output[0])
        else:  # gamma * elu(x, alpha)
            self.add(nn.Sequential(nn.ELU(alpha), ElementwiseAffine(torch.tensor(gamma, dtype=self.dtype), None)), inputs[:1], node.output[0])

    def op_Softplus(self, i, node, inputs, a) -> None:
        self.add(nn.Softplus(), inputs[:1], node.output[0])

    def op_Softsign(self, i, node, inputs, a) -> None:
        self.add(nn.Softsign(), inputs[:1], node.output[0])

    def op_HardSigmoid(self, i, node, inputs, a) -> None:
        alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
        if abs(alpha - 1 / 6) < 1e-6 and abs(beta - 0.5) < 1e-6:  # torch's hardsigmoid exports these
            self.add(nn.Hardsigmoid(), inputs[:1], node.output[0])
            self.gates[node.output[0]] = ("Hardswish", inputs[0])
        else:  # max(0, min(1, alpha x + beta))
            self.add(nn.Sequential(ElementwiseAffine(torch.tensor(alpha, dtype=self.dtype), torch.tensor(beta, dtype=self.dtype)), Clip(0.0, 1.0)),
                     inputs[:1], node.output[0])

    def op_Gelu(self, i, node, inputs, a) -> None:
        approximate = a.get("approximate", b"none")
        approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
        if approximate not in ("none", "tanh"):
            raise self.fail(i, node, f"approximate={approximate!r} (ONNX defines 'none' and 'tanh')")
        self.add(nn.GELU(approximate=approximate), inputs[:1], node.output[0])

    def op_Erf(self, i, node, inputs, a) -> None:
        self.add(Erf(), inputs[:1], node.output[0])

    def op_HardSwish(self, i, node, inputs, a) -> None:
        self.add(nn.Hardswish(), inputs[:1], node.output[0])

    def op_Dropout(self, i, node, inputs, a) -> None:  # inference: the identity (its mask output unused)
        train = self.consts.get(inputs[2]) if len(inputs) > 2 else torch.tensor(False)
        if train is None or bool(train.reshape(-1)[0]):
            raise self.fail(i, node, "training_mode is on (or computed): dropout would be random; export in eval mode")
        self.op_Identity(i, node, inputs, a)

    def op_Cast(self, i, node, inputs, a) -> None:
        """A cast between floating types (exporters insert float -> float casts): the identity, the
        module computing in its one dtype throughout (see `onnx_to_torch`); casts to integers or
        booleans are refused."""
        from onnx import helper

        target = np.dtype(helper.tensor_dtype_to_np_dtype(a["to"]))
        if target.kind != "f":
            raise self.fail(i, node, f"cast of a computed tensor to {target.name} (only float types are supported)")
        if self.values[inputs[0]].dtype == torch.bool:  # a comparison's mask as 0 / 1 numbers
            self.add(ToFloat(), inputs[:1], node.output[0])
            return
        self.op_Identity(i, node, inputs, a)

    def _axes(self, i, node, inputs, a, rank: int) -> list[int] | None:
        if len(inputs) > 1 and inputs[1] not in self.consts:
            raise self.fail(i, node, "the axes must be a constant")
        axes = a.get("axes", self.consts[inputs[1]].tolist() if len(inputs) > 1 else None)
        if axes is None:
            return None
        axes = sorted(int(ax) % rank for ax in axes)
        if 0 in axes and not self.per_point:
            raise self.fail(i, node, "the batch axis cannot be squeezed or unsqueezed")
        return axes

    def op_Squeeze(self, i, node, inputs, a) -> None:
        x = self.values[inputs[0]]
        axes = self._axes(i, node, inputs, a, x.dim())
        axes = axes if axes is not None else [d for d in range(1, x.dim()) if x.shape[d] == 1]
        if any(x.shape[d] != 1 for d in axes):
            raise self.fail(i, node, f"axes {axes} of shape {tuple(x.shape)} are not all of size 1")
        self._reshape_to(i, node, x, [s for d, s in enumerate(x.shape) if d not in axes], inputs[0])

    def op_Unsqueeze(self, i, node, inputs, a) -> None:
        x = self.values[inputs[0]]
        given = a.get("axes") or (self.consts[inputs[1]].reshape(-1).tolist() if len(inputs) > 1 and inputs[1] in self.consts else [])
        axes = self._axes(i, node, inputs, a, x.dim() + len(given))  # negative axes count in the output's rank
        shape = list(x.shape)
        for d in axes or []:
            shape.insert(d, 1)
        self._reshape_to(i, node, x, shape, inputs[0])

    def _softmax(self, i, node, inputs, a, log: bool) -> None:
        """Over one axis (default the last) from opset 13; before, over the axes from `axis` (default 1)
        on, taken together (the input coerced to 2-D)."""
        x = self.values[inputs[0]]
        what = "log-softmax" if log else "softmax"
        axis = int(a.get("axis", -1 if self.opset >= 13 else 1))
        if axis % x.dim() == 0:
            raise self.fail(i, node, f"{what} over the batch axis")
        if self.opset >= 13 or axis % x.dim() == x.dim() - 1:
            self.add((nn.LogSoftmax if log else nn.Softmax)(dim=axis if self.opset >= 13 else -1), inputs[:1], node.output[0])
        else:
            self.add(FlatSoftmax(axis % x.dim(), log), inputs[:1], node.output[0])

    def op_LogSoftmax(self, i, node, inputs, a) -> None:
        self._softmax(i, node, inputs, a, log=True)

    def op_Softmax(self, i, node, inputs, a) -> None:
        self._softmax(i, node, inputs, a, log=False)

    def _clip_bounds(self, node, a) -> tuple[float | None, float | None]:
        """(min, max): attributes before opset 11, optional inputs by position after (Clip(x, '', max)
        is how exporters write clamp(max=...))."""
        names = list(node.input[1:3]) + ["", ""]
        if any(n and n not in self.consts for n in names[:2]):
            raise ValueError("Clip bounds must be constants")
        bound = lambda n, key: float(self.consts[n].item()) if n else a.get(key)  # noqa: E731
        return bound(names[0], "min"), bound(names[1], "max")

    def op_Clip(self, i, node, inputs, a) -> None:
        try:
            lo, hi = self._clip_bounds(node, a)
        except ValueError as e:
            raise self.fail(i, node, str(e)) from None
        self.add(Clip(lo, hi), inputs[:1], node.output[0])

    def op_Pad(self, i, node, inputs, a) -> None:
        x = self.values[inputs[0]]
        mode = a.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        pads = self.consts[inputs[1]].tolist() if len(inputs) > 1 else list(a.get("pads", []))
        if len(inputs) > 1 and inputs[1] not in self.consts:
            raise self.fail(i, node, "pads must be a constant")
        value = float(self.consts[inputs[2]].item()) if len(inputs) > 2 else float(a.get("value", 0.0))
        n = x.dim()
        if len(pads) != 2 * n or pads[0] != 0 or pads[n] != 0:
            raise self.fail(i, node, f"pads {pads} must leave the batch axis alone")
        torch_pads: list[int] = []
        for d in reversed(range(1, n)):  # F.pad wants (last_begin, last_end, ...)
            torch_pads += [int(pads[d]), int(pads[n + d])]
        if mode not in ("constant", "reflect", "edge"):
            raise self.fail(i, node, f"pad mode {mode!r}")
        self.add(Pad(tuple(torch_pads), {"edge": "replicate"}.get(mode, mode), value), inputs[:1], node.output[0])

    def op_Concat(self, i, node, inputs, a) -> None:
        axis = int(a["axis"])
        if axis % self.values.get(inputs[0], self.consts.get(inputs[0])).dim() == 0:
            raise self.fail(i, node, "concatenation along the batch axis")
        if any(n in self.consts for n in inputs):
            raise self.fail(i, node, "concatenation with constant tensors")
        self.add(Concat(axis), inputs, node.output[0])

    # -- attack-only operations beyond activations: elementwise functions and arithmetic of computed
    # tensors, reductions, normalisations, attention products, upsampling. The bound engines meet
    # them through the ATen operations they run or by layer type and refuse them by name, except the
    # fused SiLU / Hardswish, which native CROWN bounds (certify/activation_lines.py).
    def _used_elsewhere(self, name: str, times: int = 1) -> bool:
        return self.uses.get(name, 0) > times

    def _fuse_gate(self, inputs: list[str], out: str) -> bool:
        """x * sigmoid(x) -> one SiLU layer, x * hardsigmoid(x) (torch's constants) -> one Hardswish layer,
        as exporters write them (Hardswish before opset 14, SiLU always): the same function, computed the
        same way, which the bound engines see as one activation instead of a product of two computed
        tensors. Only where the gate's output is read by this product alone."""
        for gate, x in (inputs, inputs[::-1]):
            kind = self.gates.get(gate)
            if kind is None or kind[1] != x or gate == x or self._used_elsewhere(gate):
                continue
            self.steps = [step for step in self.steps if step[2] != gate]
            del self.values[gate]
            self.add(nn.SiLU() if kind[0] == "SiLU" else nn.Hardswish(), [x], out)
            return True
        return False

    def _producer(self, name: str) -> tuple[nn.Module, list[str], str] | None:
        return next((step for step in reversed(self.steps) if step[2] == name), None)

    def _fuse_gelu(self, inputs: list[str], out: str) -> bool:
        """x * (c erf(x / sqrt 2) + c) -> 2c GELU(x), c > 0: GELU as exporters write it before opset 20
        (torch: Div by sqrt 2, Erf, Add 1, Mul by x, Mul by 0.5; others scale by 0.5 before the product),
        so the bound engines see one GELU, which they relax (certify/activation_lines.py), instead of a
        product of two computed tensors. Only where the inner values are read by this chain alone."""
        def scalar(t: torch.Tensor) -> float | None:
            return float(t.reshape(())) if t.numel() == 1 else None

        for gate, x in (inputs, inputs[::-1]):
            dropped, scale, shift, name = [], 1.0, 0.0, gate
            step = self._producer(name)
            # scalar affine steps after the erf, composed: gate = scale * erf + shift
            while step is not None and isinstance(step[0], ElementwiseAffine) and not self._used_elsewhere(name):
                a, b = scalar(step[0].scale), scalar(step[0].shift)
                if a is None or b is None:
                    break
                scale, shift = scale * a, scale * b + shift  # gate = scale (a w + b) + shift
                dropped.append(name)
                name = step[1][0]
                step = self._producer(name)
            if step is None or not isinstance(step[0], Erf) or self._used_elsewhere(name) or not (
                    scale > 0 and abs(shift - scale) <= 1e-6 * scale):
                continue
            dropped.append(name)
            name = step[1][0]
            div = self._producer(name)
            if div is None or not isinstance(div[0], ElementwiseAffine) or div[1][0] != x or self._used_elsewhere(name):
                continue
            a, b = scalar(div[0].scale), scalar(div[0].shift)
            if a is None or b != 0.0 or abs(a - 1 / math.sqrt(2)) > 1e-6:
                continue
            dropped.append(name)
            self.steps = [st for st in self.steps if st[2] not in set(dropped)]
            for n in dropped:
                del self.values[n]
            self.add(nn.GELU(), [x], f"{out}/gelu")
            self.add(ElementwiseAffine(torch.tensor(2 * scale, dtype=self.dtype), None), [f"{out}/gelu"], out)
            return True
        return False

    def _sign(self, name: str) -> str | None:
        """"pos" / "nonneg" when the tensor is positive / nonnegative in exact arithmetic, else None."""
        c = self.consts.get(name)
        if c is None:
            return self.signs.get(name)
        if c.dtype == torch.bool or c.numel() == 0:
            return None
        return "pos" if bool((c > 0).all()) else "nonneg" if bool((c >= 0).all()) else None

    def _output_sign(self, node: Any, inputs: list[str], a: dict[str, Any]) -> str | None:
        """The sign of a node's output that division needs (a divisor positive by construction, as in
        normalisations: sqrt(mean((x - mu)^2) + eps), sum(exp(x)), max(norm, eps))."""
        op = node.op_type
        signs = [self._sign(n) for n in inputs]
        if op in ("Exp", "Sigmoid", "Softplus", "Softmax"):
            return "pos"
        if op in ("Abs", "Relu", "ReduceL1", "ReduceL2", "ReduceSumSquare"):
            return "nonneg"
        if op == "Mul" and len(inputs) == 2 and inputs[0] == inputs[1]:  # x * x
            return "nonneg"
        if op == "Pow" and len(inputs) == 2:
            e = self.consts.get(inputs[1])
            if signs[0] == "pos":
                return "pos"
            if e is not None and e.numel() and bool((e == e.round()).all()) and bool((e.round() % 2 == 0).all()):
                return "nonneg"
            return "nonneg" if signs[0] == "nonneg" else None
        if op in ("Identity", "Cast", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Expand", "Tile",
                  "Gather", "Slice", "Sqrt", "Reciprocal", "Dropout", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"):
            return signs[0] if signs else None
        if op in ("Add", "Sum", "Mean", "Mul", "Div", "Min") and signs and all(s is not None for s in signs):
            if op in ("Add", "Sum", "Mean"):
                return "pos" if "pos" in signs else "nonneg"
            return "pos" if all(s == "pos" for s in signs) else "nonneg"
        if op == "Max" and signs:
            return "pos" if "pos" in signs else "nonneg" if "nonneg" in signs else None
        if op == "Clip":
            low = self._clip_bounds(node, a)[0]
            return None if low is None else "pos" if low > 0 else "nonneg" if low >= 0 else None
        return None

    def _require_positive(self, i, node, divisor: str) -> None:
        if self._sign(divisor) != "pos":
            raise self.fail(i, node, f"division by a computed tensor ({divisor!r}) that can be zero; only divisors "
                            "positive by construction (an exp, a sigmoid, sqrt(variance + eps), max(norm, eps)) are supported")

    def _pointwise(self, i, node, inputs: list[str], op: str) -> None:
        """An elementwise operation of computed tensors and constants with numpy broadcasting."""
        dyn, constants = self._broadcast_operands(i, node, inputs)
        self.add(Pointwise(op, len(inputs), constants), dyn, node.output[0])

    def _broadcast_operands(self, i, node, inputs: list[str]) -> tuple[list[str], dict[int, torch.Tensor]]:
        """The computed operands and the constants (by position) of an elementwise operation with
        numpy broadcasting, checked to keep each point's values apart: every computed operand has
        the output's rank (its batch axis first), no constant has a larger rank or a batch axis
        longer than 1."""
        dyn = [n for n in inputs if n not in self.consts]
        shapes = [tuple(self.values[n].shape) if n in dyn else tuple(self.consts[n].shape) for n in inputs]
        try:
            out = torch.broadcast_shapes(*shapes)
        except RuntimeError:
            raise self.fail(i, node, f"operand shapes {shapes} do not broadcast") from None
        if not self.per_point and (any(len(shapes[k]) != len(out) for k, n in enumerate(inputs) if n in dyn) or out[0] != self.batch):
            raise self.fail(i, node, f"operand shapes {shapes} broadcast the batch axis into another axis")
        constants = {}
        for k, n in enumerate(inputs):
            if n in dyn:
                continue
            c = self.consts[n]
            if len(shapes[k]) == len(out) and shapes[k][0] != 1 and not self.per_point:
                raise self.fail(i, node, f"the constant {n!r} of shape {shapes[k]} varies along the batch axis")
            constants[k] = c if c.dtype == torch.bool else self._float(c)
        return dyn, constants

    def _unary(self, i, node, inputs, a) -> None:
        self.add(UNARY[node.op_type](), inputs[:1], node.output[0])

    op_Abs = op_Exp = op_Log = op_Sqrt = _unary

    def op_Reciprocal(self, i, node, inputs, a) -> None:
        self._require_positive(i, node, inputs[0])
        self._unary(i, node, inputs, a)

    def op_Neg(self, i, node, inputs, a) -> None:
        self.add(ElementwiseAffine(-torch.ones((), dtype=self.dtype), None), inputs[:1], node.output[0])

    def op_Pow(self, i, node, inputs, a) -> None:
        self._pointwise(i, node, inputs, "Pow")

    def op_PRelu(self, i, node, inputs, a) -> None:
        dyn, constants = self._broadcast_operands(i, node, inputs)
        if dyn == inputs[:1]:  # a constant slope: the form the bound engines read (onnx_layers.PReLU)
            self.add(PReLU(constants[1]), dyn, node.output[0])
        else:
            self.add(Pointwise("PRelu", len(inputs), constants), dyn, node.output[0])

    def _variadic(self, i, node, inputs, a) -> None:
        self._pointwise(i, node, inputs, node.op_type)

    op_Max = op_Min = op_Sum = op_Mean = _variadic

    def op_Where(self, i, node, inputs, a) -> None:
        """Where with a constant condition (a mask) or one computed by comparisons (piecewise functions
        such as torch.where(x > 0, x, 0.1 * x)); the gradient flows through the branch taken."""
        self._pointwise(i, node, inputs, "Where")

    def _logical(self, i, node, inputs, a) -> None:
        """Comparisons and logic of computed tensors: boolean masks for Where / Cast (no gradient of their own)."""
        self._pointwise(i, node, inputs, node.op_type)

    op_Greater = op_Less = op_Equal = op_GreaterOrEqual = op_LessOrEqual = _logical
    op_Not = op_And = op_Or = op_Xor = _logical

    def op_Mish(self, i, node, inputs, a) -> None:
        self.add(nn.Mish(), inputs[:1], node.output[0])

    def _reduce(self, i, node, inputs, a) -> None:
        """Reduce* over non-batch axes: the axes an attribute before opset 18 (13 for ReduceSum), an
        input after; none given reduces every axis (refused: the batch too) unless noop_with_empty_axes."""
        x = self.values[inputs[0]]
        if len(inputs) > 1 and inputs[1] not in self.consts:
            raise self.fail(i, node, "the axes must be a constant")
        axes = self.consts[inputs[1]].reshape(-1).tolist() if len(inputs) > 1 else list(a.get("axes") or [])
        if not axes and a.get("noop_with_empty_axes", 0):
            self.op_Identity(i, node, inputs, a)
            return
        dims = sorted({int(d) % x.dim() for d in axes})
        if not dims or 0 in dims:
            raise self.fail(i, node, f"it reduces over the batch axis (axes {axes or 'all'} of shape {tuple(x.shape)})")
        self.add(Reduce(node.op_type[len("Reduce"):], tuple(dims), bool(a.get("keepdims", 1))), inputs[:1], node.output[0])

    op_ReduceMean = op_ReduceSum = op_ReduceMax = op_ReduceMin = op_ReduceProd = _reduce
    op_ReduceL1 = op_ReduceL2 = op_ReduceSumSquare = op_ReduceLogSumExp = _reduce

    def _extra_outputs_unused(self, i, node, what: str) -> None:
        if any(n and self.uses.get(n, 0) for n in node.output[1:]):
            raise self.fail(i, node, f"its {what} outputs are used; only the normalised output is supported")

    def _constants(self, i, node, names: list[str], what: str) -> list[torch.Tensor]:
        if any(n not in self.consts for n in names):
            raise self.fail(i, node, f"the {what} must be constants")
        return [self._float(self.consts[n]) for n in names]

    def op_LayerNormalization(self, i, node, inputs, a) -> None:
        """Normalise over the axes from `axis` (default -1) on, biased variance, then scale and bias (which
        broadcast to those axes): nn.LayerNorm over the same axes."""
        x = self.values[inputs[0]]
        axis = int(a.get("axis", -1)) % x.dim()
        if axis == 0:
            raise self.fail(i, node, "it normalises over the batch axis")
        self._extra_outputs_unused(i, node, "Mean / InvStdDev")
        shape = tuple(x.shape[axis:])
        params = self._constants(i, node, inputs[1:3], "scale and bias")
        ln = nn.LayerNorm(shape, eps=float(a.get("epsilon", 1e-5)), dtype=self.dtype)
        try:
            with torch.no_grad():
                ln.weight.copy_(torch.broadcast_to(params[0], shape))
                ln.bias.copy_(torch.broadcast_to(params[1], shape) if len(params) > 1 else torch.zeros(shape, dtype=self.dtype))
        except RuntimeError:
            raise self.fail(i, node, f"scale / bias of shapes {[tuple(p.shape) for p in params]} do not broadcast to {shape}") from None
        self.add(ln, inputs[:1], node.output[0])

    def _group_norm(self, i, node, x: torch.Tensor, groups: int, scale: torch.Tensor, bias: torch.Tensor, eps: float, inputs) -> None:
        if x.dim() < 3:
            raise self.fail(i, node, f"input of shape {tuple(x.shape)}; expected (N, C, D1, ...)")
        channels = x.shape[1]
        if groups < 1 or channels % groups:
            raise self.fail(i, node, f"{channels} channels do not split into {groups} groups")
        if scale.numel() != channels or bias.numel() != channels:
            raise self.fail(i, node, f"scale / bias of {scale.numel()} / {bias.numel()} values for {channels} channels")
        gn = nn.GroupNorm(groups, channels, eps=eps, dtype=self.dtype)
        with torch.no_grad():
            gn.weight.copy_(scale.reshape(-1))
            gn.bias.copy_(bias.reshape(-1))
        self.add(gn, inputs[:1], node.output[0])

    def op_InstanceNormalization(self, i, node, inputs, a) -> None:
        """Per point and channel over the spatial axes: GroupNorm with one group per channel."""
        x = self.values[inputs[0]]
        scale, bias = self._constants(i, node, inputs[1:3], "scale and bias")
        self._group_norm(i, node, x, x.shape[1] if x.dim() > 1 else 1, scale, bias, float(a.get("epsilon", 1e-5)), inputs)

    def op_GroupNormalization(self, i, node, inputs, a) -> None:
        """GroupNorm. Opset 18 gives scale and bias per group, opset 21 per channel (18's definition was
        withdrawn for that reason): per-group values are repeated over each group's channels."""
        x = self.values[inputs[0]]
        groups = int(a["num_groups"])
        scale, bias = self._constants(i, node, inputs[1:3], "scale and bias")
        if self.opset < 21 and x.dim() > 1 and scale.numel() == groups and groups and x.shape[1] % groups == 0:
            per = x.shape[1] // groups
            scale, bias = scale.reshape(-1).repeat_interleave(per), bias.reshape(-1).repeat_interleave(per)
        self._group_norm(i, node, x, groups, scale, bias, float(a.get("epsilon", 1e-5)), inputs)

    def op_ConvTranspose(self, i, node, inputs, a) -> None:
        x = self.values[inputs[0]]
        if x.dim() != 4 or inputs[1] not in self.consts or (len(inputs) > 2 and inputs[2] not in self.consts):
            raise self.fail(i, node, "only 2-D transposed convolutions with constant weights are supported")
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise self.fail(i, node, f"auto_pad={a['auto_pad']!r}; export with explicit pads")
        if "output_shape" in a:
            raise self.fail(i, node, "output_shape is not supported; export with pads and output_padding")
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if pads[:2] != pads[2:]:
            raise self.fail(i, node, f"asymmetric pads {pads}")
        w = self._float(self.consts[inputs[1]])  # (C_in, C_out / group, kH, kW), as torch's
        groups = int(a.get("group", 1))
        conv = nn.ConvTranspose2d(
            w.shape[0], w.shape[1] * groups, tuple(w.shape[2:]), stride=tuple(a.get("strides", [1, 1])),
            padding=tuple(pads[:2]), output_padding=tuple(a.get("output_padding", [0, 0])), groups=groups,
            bias=len(inputs) > 2, dilation=tuple(a.get("dilations", [1, 1])), dtype=self.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(w)
            if len(inputs) > 2:
                conv.bias.copy_(self._float(self.consts[inputs[2]]))
        self.add(conv, inputs[:1], node.output[0])

    def op_Resize(self, i, node, inputs, a) -> None:
        """Resize of the spatial axes in the modes F.interpolate computes alike: nearest with asymmetric
        coordinates rounded down (torch's 'nearest' export), nearest with half_pixel rounded half up
        ('nearest-exact'), (bi/tri)linear and bicubic (a = -0.75) with half_pixel / pytorch_half_pixel
        (align_corners=False) or align_corners. The output size is floor(input size * scale)."""
        x = self.values[inputs[0]]
        text = lambda k, d: (lambda v: v.decode() if isinstance(v, bytes) else v)(a.get(k, d))  # noqa: E731
        if self.opset < 11:
            raise self.fail(i, node, "Resize before opset 11 is not supported; export with opset >= 11")
        mode, ctm = text("mode", "nearest"), text("coordinate_transformation_mode", "half_pixel")
        nearest = text("nearest_mode", "round_prefer_floor")
        if a.get("antialias", 0) or text("keep_aspect_ratio_policy", "stretch") != "stretch" or "axes" in a:
            raise self.fail(i, node, "antialias, keep_aspect_ratio_policy and axes are not supported")
        rank = x.dim()
        if mode == "nearest" and ctm == "asymmetric" and nearest == "floor":
            torch_mode, corners = "nearest", None
        elif mode == "nearest" and ctm == "half_pixel" and nearest == "round_prefer_ceil":
            torch_mode, corners = "nearest-exact", None
        elif mode in ("linear", "cubic") and ctm in ("half_pixel", "pytorch_half_pixel", "align_corners") and (
                mode == "linear" or (rank == 4 and abs(float(a.get("cubic_coeff_a", -0.75)) + 0.75) < 1e-6
                                     and not a.get("exclude_outside", 0))):
            torch_mode = "bicubic" if mode == "cubic" else {3: "linear", 4: "bilinear", 5: "trilinear"}.get(rank)
            corners = ctm == "align_corners"
            if torch_mode is None:
                raise self.fail(i, node, f"linear resizing of a rank-{rank} tensor")
        else:
            raise self.fail(i, node, f"mode={mode!r} with coordinate_transformation_mode={ctm!r}, nearest_mode={nearest!r} "
                            "has no torch equivalent here (supported: nearest asymmetric/floor, nearest half_pixel/"
                            "round_prefer_ceil, linear and cubic with half_pixel or align_corners)")
        names = list(node.input) + [""] * 4
        scales_name, sizes_name = names[2], names[3]
        if any(n and n not in self.consts for n in (scales_name, sizes_name)):
            raise self.fail(i, node, "the scales / sizes must be constants")
        scales = self.consts[scales_name].reshape(-1).tolist() if scales_name else []
        sizes = self.consts[sizes_name].reshape(-1).tolist() if sizes_name else []
        if sizes:
            if len(sizes) != rank or list(sizes[:2]) != list(x.shape[:2]):
                raise self.fail(i, node, f"sizes {sizes} resize the batch or channel axis of shape {tuple(x.shape)}")
            module = Resize(tuple(int(s) for s in sizes[2:]), None, torch_mode, corners)
        elif scales:
            if len(scales) != rank or scales[:2] != [1.0, 1.0]:
                raise self.fail(i, node, f"scales {scales} resize the batch or channel axis")
            module = Resize(None, tuple(float(s) for s in scales[2:]), torch_mode, corners)
        else:
            raise self.fail(i, node, "neither scales nor sizes are given")
        if rank < 3 or (torch_mode.startswith("nearest") and rank > 5):
            raise self.fail(i, node, f"resizing a rank-{rank} tensor")
        self.add(module, inputs[:1], node.output[0])

    def op_Expand(self, i, node, inputs, a) -> None:
        x = self.values[inputs[0]]
        if inputs[1] not in self.consts:
            raise self.fail(i, node, "the target shape must be a constant")
        shape = [int(d) for d in self.consts[inputs[1]].reshape(-1).tolist()]
        try:
            out = tuple(torch.broadcast_shapes(tuple(x.shape), tuple(shape)))
        except RuntimeError:
            raise self.fail(i, node, f"shape {shape} does not broadcast with {tuple(x.shape)}") from None
        if len(out) != x.dim() or out[0] != x.shape[0]:
            raise self.fail(i, node, f"expanding {tuple(x.shape)} to {shape} moves or widens the batch axis")
        if out == tuple(x.shape):
            self.op_Identity(i, node, inputs, a)
        else:
            self.add(Expand(shape=out[1:]), inputs[:1], node.output[0])

    def op_Tile(self, i, node, inputs, a) -> None:
        x = self.values[inputs[0]]
        if inputs[1] not in self.consts:
            raise self.fail(i, node, "the repeats must be a constant")
        repeats = [int(r) for r in self.consts[inputs[1]].reshape(-1).tolist()]
        if len(repeats) != x.dim() or repeats[0] != 1 or min(repeats) < 1:
            raise self.fail(i, node, f"repeats {repeats} tile the batch axis (or do not match rank {x.dim()})")
        self.add(Expand(repeats=tuple(repeats[1:])), inputs[:1], node.output[0])

    def op_Gather(self, i, node, inputs, a) -> None:
        """Gather of a computed tensor with constant indices along a non-batch axis (token or channel picks)."""
        x = self.values[inputs[0]]
        if inputs[1] not in self.consts:
            raise self.fail(i, node, "the indices are computed from the input; only constant indices are supported")
        axis = int(a.get("axis", 0)) % x.dim()
        if axis == 0 and not self.per_point:
            raise self.fail(i, node, "gathering along the batch axis")
        idx, n = self.consts[inputs[1]].to(torch.int64), x.shape[axis]
        if idx.numel() and bool(((idx < -n) | (idx >= n)).any()):
            raise self.fail(i, node, f"indices outside [-{n}, {n - 1}] along axis {axis}")
        self.add(Gather(axis, torch.where(idx < 0, idx + n, idx)), inputs[:1], node.output[0])


def supported_operators() -> list[str]:
    """The ONNX operators the converter reads (the `op_` handlers), for refusals and docs."""
    return sorted(["Constant", *(name[3:] for name in dir(_Converter) if name.startswith("op_"))])


def _as_chain(steps: list[tuple[nn.Module, list[str], str]], input_name: str, output_name: str) -> nn.Sequential | None:
    """An nn.Sequential when each step consumes exactly the previous step's output, else None."""
    alias: dict[str, str] = {}  # Identity outputs name their input
    layers: list[nn.Module] = []
    current = input_name
    for module, ins, out in steps:
        ins = [alias.get(n, n) for n in ins]
        if isinstance(module, nn.Identity):
            alias[out] = ins[0]
            continue
        if ins != [current]:
            return None
        layers.append(module)
        current = out
    return nn.Sequential(*_fold_affine(layers)) if alias.get(output_name, output_name) == current else None


def _fold_affine(layers: list[nn.Module]) -> list[nn.Module]:
    """Merge an ElementwiseAffine into the Linear/Conv2d before it when its constants are per output
    feature/channel (MatMul + Add bias, Gemm * scale), so engines see standard layers only."""
    out: list[nn.Module] = []
    for layer in layers:
        prev = out[-1] if out else None
        if isinstance(layer, ElementwiseAffine) and isinstance(prev, (nn.Linear, nn.Conv2d)):
            n = prev.out_features if isinstance(prev, nn.Linear) else prev.out_channels
            per = (n,) if isinstance(prev, nn.Linear) else (n, 1, 1)
            try:
                s = torch.broadcast_to(layer.scale, per).reshape(n)
                t = torch.broadcast_to(layer.shift, per).reshape(n)
            except RuntimeError:
                out.append(layer)
                continue
            fused = copy.deepcopy(prev)
            view = (-1, 1) if isinstance(prev, nn.Linear) else (-1, 1, 1, 1)
            bias = prev.bias.detach() if prev.bias is not None else torch.zeros(n, dtype=prev.weight.dtype)
            fused.weight = nn.Parameter(prev.weight.detach() * s.reshape(view))
            fused.bias = nn.Parameter(bias * s + t)
            out[-1] = fused
            continue
        out.append(layer)
    return out


# Largest tensor a declared shape may ask for (2**28 elements is 1 GiB of float32): far above any
# classifier's input or weight, far below what would exhaust memory.
MAX_DECLARED_ELEMENTS = 1 << 28


def _check_dims(dims: list, what: str, allow_zero: bool) -> None:
    """Refuse negative, zero (where not allowed) or huge declared dimensions before anything allocates them."""
    low = 0 if allow_zero else 1
    if any(d < low for d in dims):
        raise InputError(f"{what} declares dimensions {list(dims)}; each must be >= {low}")
    total = 1
    for d in dims:
        total *= d
    if total > MAX_DECLARED_ELEMENTS:
        raise InputError(f"{what} declares shape {list(dims)} ({total:,} elements), more than the {MAX_DECLARED_ELEMENTS:,} allowed")


def _torch_readable(a: np.ndarray) -> np.ndarray:
    """`a`, with bfloat16 and float8 values (ml_dtypes arrays, which torch.from_numpy refuses) as
    float32: every such number is a float32 number, so nothing is rounded."""
    if a.dtype.name == "bfloat16" or a.dtype.name.startswith(("float8_", "float6_", "float4_")):  # ml_dtypes names
        return a.astype(np.float32)
    return a


# Multiply-adds of a MatMul of two constants folded at conversion (2**33: seconds of numpy).
MAX_FOLD_PRODUCTS = 1 << 33
# Ops whose constant operands may be infinite: bounds (Clip), fill values (Pad) and mask values (Where,
# Max, Min and comparisons) -- infinity selects or clamps there, it is never multiplied.
INFINITY_OPERANDS = {"Clip", "Pad", "Where", "Max", "Min", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"}


# Modules whose output has their input's shape (activations, dropout, flatten, identity): no meta
# run needed (it costs about 0.7 ms a node, which a graph of 100,000 ReLUs would feel).
_SHAPE_KEEPING = {"torch.nn.modules.activation", "torch.nn.modules.dropout", "torch.nn.modules.flatten"}


def _meta_shape(module: nn.Module, args: list[torch.Tensor]) -> tuple[int, ...] | None:
    """The shape `module(*args)` would have, from a run on the meta device (shapes only: nothing is
    allocated or computed); None when the module does not run there (then only the real run tells)."""
    from torch.func import functional_call

    try:
        state = {k: v.to("meta") for k, v in [*module.named_parameters(), *module.named_buffers()]}
        with torch.no_grad():
            out = functional_call(module, state, tuple(a.to("meta") for a in args))
    except Exception:  # noqa: BLE001 - data-dependent or meta-less operations
        return None
    return tuple(out.shape) if isinstance(out, torch.Tensor) else None


def _check_batch_independent(module: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, *input_shape, generator=g, dtype=dtype)
    with torch.no_grad():
        both = module(x)
        each = torch.cat([module(x[:1]), module(x[1:])])
    if both.shape != each.shape or not torch.allclose(both, each, rtol=1e-4, atol=1e-5, equal_nan=True):
        raise InputError("the ONNX graph mixes points of a batch (its reshapes use the batch axis); cannot convert")


def onnx_to_torch(source: str | Path | Any, dtype: torch.dtype | None = torch.float32) -> OnnxConversion:
    """Convert an ONNX file (or loaded ModelProto) to an eval-mode torch module on the CPU.

    `dtype`: of the module's parameters, buffers and computation. float32 (the default: attacks,
    training) rounds a float64 file's numbers to float32; None keeps the file's precision
    (`file_float_dtype`: float64 when the file holds any float64 number, so its weights are copied
    bit for bit, else float32), which is what bound engines need: a bound proved for weights rounded
    to float32 is not a bound for the file. torch.float64 builds a float64 module of any file."""
    model = load_onnx(source) if isinstance(source, (str, Path)) else source
    file_dtype = file_float_dtype(model)
    dtype = file_dtype if dtype is None else dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"onnx_to_torch builds float32 or float64 modules, not {dtype}")
    try:
        conv, steps = _convert(model, dtype, per_point=False)
        chain = _as_chain(steps, conv.input_name, conv.output_name)
        module: nn.Module = chain if chain is not None else OnnxGraph(conv.input_name, conv.output_name, steps)
        module.to(dtype).eval()  # the layers' default constants (ones, zeros) to the module's dtype: exact
        _check_batch_independent(module, conv.input_shape, dtype)
    except InputError as refusal:
        # A file that fixes its batch to 1 may move that axis (attention exports); read literally, run per point.
        conv, module = _per_point(model, dtype, refusal)
        chain = None
    out = conv.values[conv.output_name]
    out_shape = tuple(out.shape[1:])
    return OnnxConversion(module, conv.input_shape, out_shape, conv.input_name, chain is not None, file_dtype)


def _convert(model: Any, dtype: torch.dtype, per_point: bool) -> tuple[_Converter, list]:
    try:
        conv = _Converter(model, dtype, per_point)
        return conv, conv.run()
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - a malformed graph the checker let through: still bad input
        raise InputError(f"cannot convert the ONNX graph: {type(e).__name__}: {first_line(e)}") from None


def _per_point(model: Any, dtype: torch.dtype, refusal: InputError) -> tuple[_Converter, nn.Module]:
    """The graph read literally for its batch of one and run on each point (`PerPoint`); `refusal` (the
    batch-first reading's error) when the file does not fix its batch to 1, the literal reading fails
    too, or its output does not keep the one point first."""
    try:
        conv, steps = _convert(model, dtype, per_point=True)
    except InputError:
        raise refusal from None
    out = conv.values[conv.output_name]
    if out.dim() < 1 or out.shape[0] != 1:
        raise refusal from None
    graph = OnnxGraph(conv.input_name, conv.output_name, steps).to(dtype).eval()
    x = torch.rand(2, *conv.input_shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    with torch.no_grad():
        each = torch.cat([graph(x[:1]), graph(x[1:])])
        module = PerPoint(graph, vectorised=True)
        try:
            ok = torch.allclose(module(x), each, rtol=1e-5, atol=1e-6, equal_nan=True)
        except Exception:  # noqa: BLE001 - an operation without a vmap batching rule
            ok = False
    return conv, module if ok else PerPoint(graph, vectorised=False)
