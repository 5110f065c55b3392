"""ONNX -> PyTorch for feed-forward classifiers (the VNN-COMP op set), without onnx2torch.

`onnx_to_torch(path)` reads the graph with the `onnx` package and returns an equivalent module:
an `nn.Sequential` of standard layers (Flatten, Linear, Conv2d, BatchNorm1d/2d, ReLU) when the
graph is a chain, so bound engines can walk it, else an `OnnxGraph` that runs the nodes in order.

Supported: Gemm, MatMul, Add, Sub, Mul, Div, Relu, Flatten, Reshape, Conv (2-D), BatchNormalization
(inference), Constant, Identity, Transpose that keeps the batch axis first (a reshape when it only
moves size-1 axes, else a `Permute`: NHWC inputs moved to NCHW), and constant folding
of Shape/Gather/Unsqueeze/Squeeze/Concat/Cast as exporters emit for `x.view(x.size(0), -1)`; and,
for attacks (forward and backward passes only), pooling, Concat, Pad, the common activations
(the list in `run`'s refusal) and Mul of two computed tensors (GELU as exporters before opset 20
write it, x * 0.5 * (1 + erf(x / sqrt 2))), each as the torch module of the same function.
Anything else is an `InputError` naming the node.

Choices (the ONNX spec leaves the batch open): the first axis of the graph input is the batch. A
file that fixes it to 1 (as VNN-COMP's do) still accepts any batch: Reshape targets that repeat
the fixed batch size keep the batch axis instead. The conversion runs the module on a batch of
two and on each point alone and refuses a graph whose rows influence each other.

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
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustcli.certify.onnx_layers import Binary, Clip, Concat, ElementwiseAffine, Erf, OnnxGraph, Pad, Permute, Reshape, Slice
from robustcli.core.errors import InputError, first_line

SELU_ALPHA, SELU_GAMMA = 1.6732632423543772, 1.0507009873554805  # ONNX's (and torch's) SELU constants

ELEMENTWISE = {"Add", "Sub", "Mul", "Div"}


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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"cannot read {path.name} as an ONNX model: {first}") from None
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
    def __init__(self, model: Any, dtype: torch.dtype):
        from onnx import numpy_helper

        self.dtype = dtype  # of the module's parameters, buffers and computed values

        self.numpy_helper = numpy_helper
        graph = model.graph
        self.graph = graph
        for t in graph.initializer:  # declared sizes are checked before numpy allocates them
            _check_dims(list(t.dims), f"ONNX initializer {t.name!r}", allow_zero=True)
        try:
            self.consts: dict[str, torch.Tensor] = {
                t.name: torch.from_numpy(np.array(numpy_helper.to_array(t))) for t in graph.initializer
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
        _check_dims([self.batch, *shape[1:]], f"the ONNX input {self.input_name!r}", allow_zero=False)
        self.input_shape = tuple(int(s) for s in shape[1:])
        # Shapes of computed tensors, traced with a zero input of the file's batch size.
        self.values: dict[str, torch.Tensor] = {
            self.input_name: torch.zeros(self.batch, *self.input_shape, dtype=self.dtype)}
        self.steps: list[tuple[nn.Module, list[str], str]] = []

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
        with torch.no_grad():
            self.values[out] = module(*[self.values[i] for i in ins])
        self.steps.append((module, ins, out))

    # -- conversion ----------------------------------------------------------------------------
    def run(self) -> list[tuple[nn.Module, list[str], str]]:
        for i, node in enumerate(self.graph.node):
            inputs = [n for n in node.input if n != ""]
            if all(n in self.consts for n in inputs) and node.op_type != "Shape":
                self.fold(i, node, inputs)
                continue
            handler = getattr(self, f"op_{node.op_type}", None)
            if handler is None:
                raise self.fail(i, node, f"operator {node.op_type} is outside the supported feed-forward set "
                                "(Gemm, MatMul, Add, Sub, Mul, Div, Relu, Flatten, Reshape, Conv, "
                                "BatchNormalization, Constant, Identity, Transpose, MaxPool, AveragePool, "
                                "GlobalAveragePool, Sigmoid, Tanh, Softmax, LogSoftmax, LeakyRelu, Elu, Celu, Selu, "
                                "Softplus, Softsign, HardSigmoid, HardSwish, Gelu, Erf, Clip, Pad, Concat, Dropout, "
                                "Cast, Squeeze, Unsqueeze, Slice, Split)")
            missing = [n for n in inputs if n not in self.consts and n not in self.values]
            if missing:
                raise self.fail(i, node, f"input {missing[0]!r} is not computed before it (graph not sorted?)")
            handler(i, node, inputs, self.attrs(node))
        if self.output_name not in self.values:
            raise InputError(f"the ONNX output {self.output_name!r} is not computed from the input")
        return self.steps

    def fold(self, i: int, node: Any, inputs: list[str]) -> None:
        """Evaluate a node whose inputs are all constants (weights transposed by a node, shape arithmetic)."""
        a = self.attrs(node)
        x = [self.consts[n].numpy() for n in inputs]
        op = node.op_type
        try:
            if op == "Constant":
                if "value" not in a:
                    raise ValueError("only Constant nodes with a tensor `value` are supported")
                out = np.array(self.numpy_helper.to_array(a["value"]))
            elif op == "Identity":
                out = x[0]
            elif op in ELEMENTWISE:
                out = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}.get(op, np.divide)(x[0], x[1])
                if op == "Div" and np.issubdtype(x[0].dtype, np.integer):
                    out = x[0] // x[1]
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
        self.consts[node.output[0]] = torch.from_numpy(np.array(out))

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
        if inputs[0] in self.consts or inputs[1] not in self.consts or self.consts[inputs[1]].dim() != 2:
            raise self.fail(i, node, "only MatMul(input, constant 2-D matrix) is supported")
        w = self._float(self.consts[inputs[1]])
        lin = nn.Linear(w.shape[0], w.shape[1], bias=False, dtype=self.dtype)
        with torch.no_grad():
            lin.weight.copy_(w.t())
        self.add(lin, inputs[:1], node.output[0])

    def _elementwise(self, i, node, inputs, a) -> None:
        op = node.op_type
        dyn = [n for n in inputs if n not in self.consts]
        if len(dyn) == 2:
            if op == "Div":
                raise self.fail(i, node, "division by a computed tensor is outside the supported set")
            self.add(Binary(op), inputs, node.output[0])
            return
        c = self._float(self.consts[inputs[1] if inputs[0] in dyn else inputs[0]])
        x_shape = self.values[dyn[0]].shape
        try:
            out_shape = torch.broadcast_shapes(x_shape, c.shape)
        except RuntimeError:
            raise self.fail(i, node, f"constant of shape {tuple(c.shape)} does not broadcast to {tuple(x_shape)}") from None
        if tuple(out_shape) != tuple(x_shape):
            raise self.fail(i, node, f"constant of shape {tuple(c.shape)} changes the shape {tuple(x_shape)}")
        if c.dim() == len(x_shape) and c.shape[0] != 1:
            raise self.fail(i, node, "the constant varies along the batch axis")
        if c.dim() == len(x_shape):
            c = c[0]  # drop the batch axis so any batch size broadcasts
        const_first = inputs[0] not in dyn
        if op == "Add":
            m = ElementwiseAffine(None, c)
        elif op == "Sub":
            m = ElementwiseAffine(-torch.ones((), dtype=self.dtype), c) if const_first else ElementwiseAffine(None, -c)
        elif op == "Mul":
            m = ElementwiseAffine(c, None)
        else:
            if const_first:
                raise self.fail(i, node, "division by a computed tensor is not piecewise linear")
            m = ElementwiseAffine(1.0 / c, None)
        self.add(m, dyn, node.output[0])

    op_Add = op_Sub = op_Mul = op_Div = _elementwise

    def op_Flatten(self, i, node, inputs, a) -> None:
        x = self.values[inputs[0]]
        axis = a.get("axis", 1)
        axis = axis + x.dim() if axis < 0 else axis
        if axis < 1 or any(s != 1 for s in x.shape[1:axis]):
            raise self.fail(i, node, f"Flatten axis={axis} on shape {tuple(x.shape)} would merge the batch axis")
        self.add(nn.Flatten(), inputs[:1], node.output[0])

    def _reshape_to(self, i, node, x: torch.Tensor, target: list[int], src: str) -> None:
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
        if perm[0] == 0 and kept == sorted(kept):
            # moves only size-1 axes: a reshape, which keeps chain models chains of standard layers
            self._reshape_to(i, node, x, list(x.permute(perm).shape), inputs[0])
        elif perm[0] == 0:
            self.add(Permute(tuple(perm)), inputs[:1], node.output[0])  # e.g. an NHWC input moved to NCHW
        else:
            raise self.fail(i, node, f"Transpose perm={perm} on shape {tuple(x.shape)} moves the batch axis")

    def op_Conv(self, i, node, inputs, a) -> None:
        x = self.values[inputs[0]]
        if x.dim() != 4 or inputs[1] not in self.consts or (len(inputs) > 2 and inputs[2] not in self.consts):
            raise self.fail(i, node, "only 2-D convolutions with constant weights are supported")
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise self.fail(i, node, f"auto_pad={a['auto_pad']!r}; export with explicit pads")
        w = self._float(self.consts[inputs[1]])
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if pads[:2] != pads[2:]:
            raise self.fail(i, node, f"asymmetric pads {pads}")
        groups = int(a.get("group", 1))
        conv = nn.Conv2d(
            w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=tuple(a.get("strides", [1, 1])),
            padding=tuple(pads[:2]), dilation=tuple(a.get("dilations", [1, 1])), groups=groups, bias=len(inputs) > 2,
            dtype=self.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(w)
            if len(inputs) > 2:
                conv.bias.copy_(self._float(self.consts[inputs[2]]))
        self.add(conv, inputs[:1], node.output[0])

    def op_BatchNormalization(self, i, node, inputs, a) -> None:
        x = self.values[inputs[0]]
        if a.get("training_mode", 0) or len(node.output) > 1 or not all(n in self.consts for n in inputs[1:5]):
            raise self.fail(i, node, "only inference-mode BatchNormalization with constant statistics is supported")
        if x.dim() not in (2, 3, 4):
            raise self.fail(i, node, f"input of shape {tuple(x.shape)}")
        scale, bias, mean, var = (self._float(self.consts[n]) for n in inputs[1:5])
        bn = (nn.BatchNorm2d if x.dim() == 4 else nn.BatchNorm1d)(x.shape[1], eps=float(a.get("epsilon", 1e-5)), dtype=self.dtype)
        with torch.no_grad():
            bn.weight.copy_(scale)
            bn.bias.copy_(bias)
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
        self.add(bn, inputs[:1], node.output[0])


    # -- operations attacks need (forward and backward passes); the ReLU bound engines refuse the
    # non-piecewise-linear ones by name, auto_LiRPA's methods bound several of them.
    def _pool_args(self, i, node, a, x: torch.Tensor) -> tuple[tuple, tuple, tuple]:
        if x.dim() != 4:
            raise self.fail(i, node, f"only 2-D pooling is supported, got input shape {tuple(x.shape)}")
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise self.fail(i, node, f"auto_pad={a['auto_pad']!r}; export with explicit pads")
        k = tuple(a["kernel_shape"])
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if pads[:2] != pads[2:]:
            raise self.fail(i, node, f"asymmetric pads {pads}")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise self.fail(i, node, "dilated pooling")
        return k, tuple(a.get("strides", [1, 1])), tuple(pads[:2])

    def op_MaxPool(self, i, node, inputs, a) -> None:
        if len(node.output) > 1 and node.output[1]:
            raise self.fail(i, node, "the Indices output is not supported")
        k, stride, pad = self._pool_args(i, node, a, self.values[inputs[0]])
        self.add(nn.MaxPool2d(k, stride, pad, ceil_mode=bool(a.get("ceil_mode", 0))), inputs[:1], node.output[0])

    def op_AveragePool(self, i, node, inputs, a) -> None:
        k, stride, pad = self._pool_args(i, node, a, self.values[inputs[0]])
        pool = nn.AvgPool2d(k, stride, pad, ceil_mode=bool(a.get("ceil_mode", 0)),
                            count_include_pad=bool(a.get("count_include_pad", 0)))
        self.add(pool, inputs[:1], node.output[0])

    def op_GlobalAveragePool(self, i, node, inputs, a) -> None:
        if self.values[inputs[0]].dim() != 4:
            raise self.fail(i, node, "only 2-D global pooling is supported")
        self.add(nn.AdaptiveAvgPool2d(1), inputs[:1], node.output[0])

    def op_Sigmoid(self, i, node, inputs, a) -> None:
        self.add(nn.Sigmoid(), inputs[:1], node.output[0])

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
        self.op_Identity(i, node, inputs, a)

    def _axes(self, i, node, inputs, a, rank: int) -> list[int] | None:
        if len(inputs) > 1 and inputs[1] not in self.consts:
            raise self.fail(i, node, "the axes must be a constant")
        axes = a.get("axes", self.consts[inputs[1]].tolist() if len(inputs) > 1 else None)
        if axes is None:
            return None
        axes = sorted(int(ax) % rank for ax in axes)
        if 0 in axes:
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

    def op_LogSoftmax(self, i, node, inputs, a) -> None:
        axis = int(a.get("axis", -1))
        if (axis % self.values[inputs[0]].dim()) == 0:
            raise self.fail(i, node, "log-softmax over the batch axis")
        self.add(nn.LogSoftmax(dim=axis), inputs[:1], node.output[0])

    def op_Softmax(self, i, node, inputs, a) -> None:
        axis = int(a.get("axis", -1))
        x = self.values[inputs[0]]
        if (axis % x.dim()) == 0:
            raise self.fail(i, node, "softmax over the batch axis")
        self.add(nn.Softmax(dim=axis), inputs[:1], node.output[0])

    def op_Clip(self, i, node, inputs, a) -> None:
        lo = self.consts[inputs[1]].item() if len(inputs) > 1 else a.get("min", None)
        hi = self.consts[inputs[2]].item() if len(inputs) > 2 else a.get("max", None)
        if (len(inputs) > 1 and inputs[1] not in self.consts) or (len(inputs) > 2 and inputs[2] not in self.consts):
            raise self.fail(i, node, "Clip bounds must be constants")
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
        conv = _Converter(model, dtype)
        steps = conv.run()
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - a malformed graph the checker let through: still bad input
        raise InputError(f"cannot convert the ONNX graph: {type(e).__name__}: {first_line(e)}") from None
    chain = _as_chain(steps, conv.input_name, conv.output_name)
    module: nn.Module = chain if chain is not None else OnnxGraph(conv.input_name, conv.output_name, steps)
    module.to(dtype).eval()  # the layers' default constants (ones, zeros) to the module's dtype: exact
    out = conv.values[conv.output_name]
    _check_batch_independent(module, conv.input_shape, dtype)
    return OnnxConversion(module, conv.input_shape, tuple(out.shape[1:]), conv.input_name, chain is not None,
                          file_dtype)
