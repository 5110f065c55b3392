"""Graph front end: any model `robust attack` accepts, read into one canonical layer tree.

Choice: `torch.export` (ATen graph), not `torch.fx.symbolic_trace`. Symbolic tracing fails on the
idioms users write (`x.view(x.size(0), -1)` traces through a Proxy but `if x.dim() == 4` or
shape-dependent Python does not), and it cannot read TorchScript or `.pt2` files; torch.export
runs the real forward with fake tensors, so shape arithmetic is evaluated, functional calls
(`F.relu`, `torch.flatten`) and module calls become the same ATen operations, `.pt2` programs
already are such graphs, and TorchScript converts to one (`torch._export.converter`). ONNX files
go through `certify/onnx_import.py` into torch modules first, then the same path.

The ATen graph is rewritten into the canonical tree the bound engines walk (certify/graph.py,
certify/chain_bounds.py): `nn.Sequential` of Linear, Conv2d, ReLU, BatchNorm1d/2d, Flatten,
`Reshape`, AvgPool2d, AdaptiveAvgPool2d, the monotone max pooling and activations
(MaxPool2d, AdaptiveMaxPool2d, Sigmoid, Tanh, LeakyReLU, `Clip` for hardtanh/clamp, ReLU6, ELU, CELU,
SELU, Softplus, LogSigmoid, Hardsigmoid, and the non-monotone GELU, SiLU, Mish and Hardswish that
native CROWN relaxes with certify/activation_lines.py; each carries `origin`, the ATen operation it came from, so an engine that cannot bound it names that), `ElementwiseAffine` (add/sub/mul/div by constants:
normalisation layers), `Residual` (an add of two computed tensors that fork from one value) and
`Concat` (a torch.cat of computed tensors that fork from one value, along a feature axis); PReLU and
abs are written with a ReLU as such a residual (`_relu_split_form`).
Parameters are copied (bounds are functions of the weights at the time of the call; training
bounds the user's module directly, never this copy). Any other operation raises
`UnsupportedOperation` naming the ATen op and the graph node, e.g. "aten.sin (node 'sin')".
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from robustcli.certify.onnx_layers import Clip, ElementwiseAffine, NotBoundable, Permute, Reshape, Slice
from robustcli.core.errors import InputError
from robustcli.core.nn import Concat, Residual

# Operations that do nothing to values in eval mode.
_IDENTITY = {"clone", "contiguous", "detach", "alias", "dropout", "feature_dropout", "lift_fresh_copy", "_to_copy"}
_RESHAPE = {"view", "reshape", "flatten", "_unsafe_view", "squeeze", "unsqueeze"}
# Nondecreasing in every input: interval bounds map [l, u] to [f(l), f(u)] (certify/ibp.py).
_MONOTONE = {"max_pool2d", "max_pool2d_with_indices", "adaptive_max_pool2d", "sigmoid", "sigmoid_", "tanh", "tanh_",
             "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_", "relu6", "clamp", "clamp_", "elu", "elu_", "celu",
             "celu_", "selu", "selu_", "softplus", "log_sigmoid", "hardsigmoid", "hardsigmoid_", "clamp_min",
             "clamp_min_", "clamp_max", "clamp_max_"}
# Elementwise but not monotone: native CROWN bounds them (certify/activation_lines.py), IBP refuses them.
_ELEMENTWISE = {"gelu", "gelu_", "silu", "silu_", "mish", "mish_", "hardswish", "hardswish_"}
_SHAPE_ONLY = {"sym_size", "size", "sym_numel", "_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range",
               "sym_constrain_range_for_size", "_assert_async"}


class UnsupportedOperation(InputError):
    """The model uses an operation the native bound engines cannot bound; the message names it."""


@dataclass
class _Value:
    """A tensor of the graph: the canonical layers that compute it from the model input."""

    layers: list[nn.Module]
    shape: tuple[int, ...]  # per point (no batch dimension)


def _op_name(target) -> str:
    name = getattr(target, "__name__", str(target))  # e.g. "relu.default"
    return name.split(".")[0]


def _where(node) -> str:
    return f"aten.{_op_name(node.target)} (node '{node.name}')"


def export_program(model, example: torch.Tensor):
    """A torch.export program of the model at the example input (batch kept symbolic where possible)."""
    if isinstance(model, torch.export.ExportedProgram):
        return model
    with warnings.catch_warnings(), _quiet_logs():
        warnings.simplefilter("ignore")
        if isinstance(model, torch.jit.ScriptModule):
            from torch._export.converter import TS2EPConverter

            try:
                return TS2EPConverter(model, (example,)).convert()
            except Exception as e:  # noqa: BLE001 - the converter raises anything on graphs it cannot read
                raise UnsupportedOperation(f"cannot read the TorchScript graph for bounding: {_first(e)}") from None
        try:
            return torch.export.export(model, (example,), strict=False)
        except NotBoundable as e:
            raise UnsupportedOperation(_first(e)) from None
        except Exception as e:  # noqa: BLE001 - export raises many types on data-dependent control flow
            raise UnsupportedOperation(
                f"cannot trace the model into an operation graph for bounding ({type(e).__name__}: {_first(e)}); "
                "bounding needs a forward pass without data-dependent Python control flow"
            ) from None


@contextlib.contextmanager
def _quiet_logs():
    """torch.export logs shape specialisations as warnings; a CLI prints one line per outcome."""
    names = ("torch._export", "torch.export", "torch.fx.experimental.symbolic_shapes", "torch._dynamo")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _first(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def canonical_model(model, example: torch.Tensor) -> nn.Sequential:
    """The model as a canonical layer tree computing the same function (eval-mode semantics of the
    graph as exported). `example`: one input batch (N, *shape) on the model's device."""
    program = getattr(model, "program", model)  # robustcli's wrapper of a loaded .pt2 keeps it as .program
    if isinstance(program, torch.fx.GraphModule) and _is_aten_graph(program):
        # A loaded .pt2 program: already an ATen graph (re-exporting it would fix its batch size).
        tensors = {n.name: _get_attr(program, n.target).detach() for n in program.graph.nodes if n.op == "get_attr"}
        inputs = [n.name for n in program.graph.nodes if n.op == "placeholder"]
        return _Converter(program.graph, tensors, inputs, example).run()
    ep = export_program(model, example)
    sig = ep.graph_signature
    state = dict(ep.state_dict)
    consts = dict(getattr(ep, "constants", {}) or {})
    tensors: dict[str, torch.Tensor] = {}
    for ph, name in sig.inputs_to_parameters.items():
        tensors[ph] = state[name].detach()
    for ph, name in sig.inputs_to_buffers.items():
        tensors[ph] = (state[name] if name in state else consts[name]).detach()
    for ph, name in getattr(sig, "inputs_to_lifted_tensor_constants", {}).items():
        tensors[ph] = consts[name].detach()
    inputs = [s.arg.name for s in sig.input_specs if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    return _Converter(ep.graph, tensors, inputs, example).run()


def _is_aten_graph(gm: torch.fx.GraphModule) -> bool:
    return any(n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload) for n in gm.graph.nodes)


def _get_attr(module: nn.Module, target: str) -> torch.Tensor:
    for part in target.split("."):
        module = getattr(module, part)
    return module


class _Converter:
    def __init__(self, graph, tensors: dict[str, torch.Tensor], user_inputs: list[str], example: torch.Tensor):
        self.graph = graph
        self.example = example
        self.tensors = dict(tensors)
        self.user_inputs = user_inputs
        if len(self.user_inputs) != 1:
            raise UnsupportedOperation(f"bounding needs a model with one input tensor, this one takes {len(self.user_inputs)}")
        self.batch = example.shape[0]

    def const(self, arg) -> torch.Tensor | None:
        if isinstance(arg, torch.fx.Node):
            return self.tensors.get(arg.name)
        if isinstance(arg, (int, float)):
            return torch.tensor(float(arg))
        return None

    def run(self) -> nn.Sequential:
        values: dict[str, _Value | None] = {}
        output = None
        for node in self.graph.nodes:
            if node.op in ("placeholder", "get_attr"):
                if node.name in self.user_inputs:
                    val = node.meta.get("val")
                    if val is not None and hasattr(val, "shape") and len(val.shape):
                        self.batch = val.shape[0]  # the batch size the graph was traced with
                    values[node.name] = _Value([], tuple(self.example.shape[1:]))
                continue
            if node.op == "call_module" and "guard" in str(node.target):
                continue  # the program's input checks (shape guards), not part of the function
            if node.op == "output":
                outs = node.args[0]
                if not isinstance(outs, (list, tuple)) or len(outs) != 1:
                    raise UnsupportedOperation("bounding needs a model with one output tensor (the logits)")
                output = values.get(outs[0].name)
                break
            if node.op != "call_function":
                raise UnsupportedOperation(f"graph node '{node.name}' ({node.op}) is not an operation call")
            op = _op_name(node.target)
            if op in _SHAPE_ONLY:
                continue
            if op == "getitem":  # e.g. the first output of a batch norm that returns (y, mean, rstd)
                src = values.get(node.args[0].name)
                if node.args[1] != 0 and not node.users:
                    continue  # an unused second output (max pooling's indices)
                if node.args[1] != 0 or src is None:
                    raise UnsupportedOperation(f"graph node '{node.name}' takes output {node.args[1]} of an operation")
                values[node.name] = src
                continue
            if self._fold_constants(node, values):
                continue
            values[node.name] = self.convert(node, op, values)
        if output is None:
            raise UnsupportedOperation("the model's output does not depend on its input")
        tree = nn.Sequential(*output.layers)
        # One mode for the whole tree, the graph's own: eval unless its batch norms normalise with
        # batch statistics. Engines that set a model's mode from its top module (auto_LiRPA's
        # BoundedModule does) must not switch eval-mode batch norms to batch statistics.
        bns = [m for m in tree.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        return tree.train(any(bn.training for bn in bns))

    def _fold_constants(self, node, values) -> bool:
        """Evaluate an operation whose tensor inputs are all constants (e.g. 1 / std); True if done."""
        nodes = [a for a in node.all_input_nodes]
        if not nodes or any(n.name in values or n.name not in self.tensors for n in nodes):
            return False
        sub = lambda a: self.tensors[a.name] if isinstance(a, torch.fx.Node) else a  # noqa: E731
        args = torch.fx.node.map_aggregate(node.args, sub)
        kwargs = torch.fx.node.map_aggregate(node.kwargs, sub)
        with torch.no_grad():
            out = node.target(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            self.tensors[node.name] = out
        return True

    # -- one ATen operation ----------------------------------------------------------------------
    def _input(self, node, values, i: int = 0) -> _Value:
        arg = node.args[i]
        v = values.get(arg.name) if isinstance(arg, torch.fx.Node) else None
        if v is None:
            raise UnsupportedOperation(f"{_where(node)} computes on constants only; its input must come from the model input")
        return v

    def _out_shape(self, node) -> tuple[int, ...]:
        val = node.meta.get("val")
        if isinstance(val, (tuple, list)) and val:  # (values, indices) of max_pool2d_with_indices
            val = val[0]
        if val is None or not hasattr(val, "shape"):
            raise UnsupportedOperation(f"{_where(node)} has no recorded output shape")
        if len(val.shape) == 0 or not _is_batch(val.shape[0], self.batch):
            raise UnsupportedOperation(f"{_where(node)} mixes the batch dimension into the features; "
                                       "each point must be computed on its own")
        return tuple(int(s) for s in val.shape[1:])

    def _then(self, v: _Value, layer: nn.Module, node) -> _Value:
        return _Value(v.layers + [layer], self._out_shape(node))

    def convert(self, node, op: str, values) -> _Value | None:  # noqa: C901 - one branch per ATen op
        args = node.args
        if op in ("relu", "relu_"):
            return self._then(self._input(node, values), nn.ReLU(), node)
        if op in _IDENTITY:
            if op in ("dropout", "feature_dropout") and len(args) > 2 and args[2]:
                raise UnsupportedOperation(f"{_where(node)} is in training mode (random); put the model in eval mode")
            return self._input(node, values)
        if op == "linear":
            w, b = self.tensors[args[1].name], self.const(args[2]) if len(args) > 2 and args[2] is not None else None
            lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
            lin.weight.data = w.clone()
            if b is not None:
                lin.bias.data = b.clone()
            return self._then(self._input(node, values), lin, node)
        if op == "addmm":  # bias + x @ w^T as decomposed graphs write Linear
            w_t = node.args[2]
            w = self.tensors.get(w_t.args[0].name) if isinstance(w_t, torch.fx.Node) and _op_name(w_t.target) in ("t", "permute") else None
            if w is None:
                raise UnsupportedOperation(f"{_where(node)} multiplies by a computed matrix")
            lin = nn.Linear(w.shape[1], w.shape[0])
            lin.weight.data, lin.bias.data = w.clone(), self.tensors[args[0].name].clone()
            return self._then(self._input(node, values, 1), lin, node)
        if op in ("t", "permute") and isinstance(args[0], torch.fx.Node) and args[0].name in self.tensors:
            return None  # a transposed weight, consumed by addmm
        if op == "slice" and len(args) > 1 and int(args[1]) == 0 and (len(args) < 3 or args[2] in (None, 0)) and (
                len(args) < 4 or args[3] is None or int(args[3]) >= 2**62) and (len(args) < 5 or args[4] in (None, 1)):
            return self._input(node, values)  # x[:, ...] exports a whole-range slice of the batch axis first
        if op == "slice" and len(args) > 1 and int(args[1]) != 0:  # a range of a non-batch axis (ONNX Slice, Split)
            v = self._input(node, values)
            rank = len(v.shape) + 1
            axis = int(args[1]) % rank
            begin, end, step = (list(args[2:5]) + [None] * 3)[:3]
            begin, end, step = slice(begin, end, step or 1).indices(v.shape[axis - 1])
            if step <= 0:
                raise UnsupportedOperation(f"{_where(node)} slices with a non-positive step")
            return _Value(v.layers + [Slice(((axis, begin, end, step),))], self._out_shape(node))
        if op == "permute" and list(args[1])[:1] == [0]:  # a layout change of a computed tensor (NHWC -> NCHW)
            v = self._input(node, values)
            return _Value(v.layers + [Permute(tuple(args[1]))], self._out_shape(node))
        if op in ("conv2d", "convolution"):
            return self._conv(node, op, values)
        if op in _MONOTONE or op in _ELEMENTWISE:
            return self._monotone(node, op, values)
        if op in ("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional"):
            return self._batch_norm(node, op, values)
        if op in _RESHAPE:
            v = self._input(node, values)
            shape = self._out_shape(node)
            if shape == v.shape:
                return v
            layer = nn.Flatten() if len(shape) == 1 and math.prod(shape) == math.prod(v.shape) else Reshape(shape)
            return _Value(v.layers + [layer], shape)
        if op == "avg_pool2d":
            k = args[1]
            stride = args[2] if len(args) > 2 and args[2] else k
            padding = args[3] if len(args) > 3 else 0
            ceil = args[4] if len(args) > 4 else False
            include_pad = args[5] if len(args) > 5 else True
            divisor = args[6] if len(args) > 6 else None
            # Tuples, as nn.AvgPool2d built by hand has them (ATen gives int lists).
            pool = nn.AvgPool2d(_pair(k), _pair(stride), _pair(padding), ceil, include_pad, divisor)
            return self._then(self._input(node, values), pool, node)
        if op in ("adaptive_avg_pool2d", "_adaptive_avg_pool2d"):
            return self._then(self._input(node, values), nn.AdaptiveAvgPool2d(tuple(args[1])), node)
        if op in ("mean",) and len(args) > 1 and list(args[1]) in ([-1, -2], [-2, -1], [2, 3], [3, 2]):
            keep = len(args) > 2 and args[2]
            v = self._input(node, values)
            layers = [nn.AdaptiveAvgPool2d(1)] + ([] if keep else [nn.Flatten()])
            return _Value(v.layers + layers, self._out_shape(node))
        if op in ("add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "rsub"):
            return self._arith(node, op.rstrip("_"), values)
        if op in ("cat", "concat", "concatenate"):
            return self._concat(node, values)
        if op in ("prelu", "_prelu_kernel", "abs", "abs_"):
            return self._relu_split_form(node, op.rstrip("_"), values)
        if op in ("log_softmax", "_log_softmax", "softmax", "_softmax"):
            # over the class axis of flat logits: bounders drop a final one (bounders.without_final_head)
            v = self._input(node, values)
            what = "log-softmax" if "log" in op else "softmax"
            if len(v.shape) != 1 or int(args[1]) not in (1, -1):
                raise UnsupportedOperation(f"{_where(node)} is a {what} over a feature map, not over class logits; "
                                           f"the bound engines read a {what} only as the model's last operation, "
                                           "over its class logits")
            return self._then(v, (nn.LogSoftmax if "log" in op else nn.Softmax)(dim=1), node)
        raise UnsupportedOperation(
            f"the native bound engines do not support {_where(node)} of this model; they bound linear, conv2d, relu, "
            "batch_norm, view/reshape/flatten, avg/max pooling, elementwise activations (sigmoid, tanh, leaky_relu, "
            "hardtanh/clamp, elu, softplus, gelu, silu, ...), residual add, concatenation (cat), prelu, abs and add/sub/mul/div by constants"
        )

    def _conv(self, node, op: str, values) -> _Value:
        a = list(node.args) + [None] * 9
        w, b = self.tensors.get(a[1].name), self.const(a[2]) if a[2] is not None else None
        if w is None or w.dim() != 4:
            raise UnsupportedOperation(f"{_where(node)} is not a 2-D convolution with constant weights")
        stride, padding, dilation = a[3] or [1, 1], a[4] or [0, 0], a[5] or [1, 1]
        groups = a[6] if op == "conv2d" else a[8]
        if op == "convolution" and a[6]:
            raise UnsupportedOperation(f"{_where(node)} is a transposed convolution")
        if isinstance(padding, str):
            raise UnsupportedOperation(f"{_where(node)} uses padding={padding!r}; give explicit integer padding")
        conv = nn.Conv2d(w.shape[1] * (groups or 1), w.shape[0], tuple(w.shape[2:]), tuple(stride), tuple(padding),
                         tuple(dilation), groups or 1, bias=b is not None)
        conv.weight.data = w.clone()
        if b is not None:
            conv.bias.data = b.clone()
        return self._then(self._input(node, values), conv, node)

    def _monotone(self, node, op: str, values) -> _Value:
        """Max pooling and the elementwise activations: one module each, labelled with the graph operation."""
        arg = lambda i, name, default: node.args[i] if len(node.args) > i else node.kwargs.get(name, default)  # noqa: E731
        op = op.rstrip("_")
        if op.startswith("max_pool2d"):
            k = _pair(arg(1, "kernel_size", None))
            stride = _pair(arg(2, "stride", None)) or k
            layer: nn.Module = nn.MaxPool2d(k, stride, _pair(arg(3, "padding", 0)), _pair(arg(4, "dilation", 1)),
                                            ceil_mode=bool(arg(5, "ceil_mode", False)))
        elif op == "adaptive_max_pool2d":
            layer = nn.AdaptiveMaxPool2d(_pair(arg(1, "output_size", None)))
        elif op == "leaky_relu":
            layer = nn.LeakyReLU(float(arg(1, "negative_slope", 0.01)))
        elif op in ("hardtanh", "clamp", "clamp_min", "clamp_max"):
            if op == "clamp_max":
                low, high = None, arg(1, "max", None)
            else:
                low = arg(1, "min", -1.0 if op == "hardtanh" else None)
                high = None if op == "clamp_min" else arg(2, "max", 1.0 if op == "hardtanh" else None)
            if not all(v is None or isinstance(v, (int, float)) for v in (low, high)):
                raise UnsupportedOperation(f"{_where(node)} clamps to computed bounds; only constant bounds are supported")
            layer = Clip(low, high)
        elif op == "relu6":
            layer = nn.ReLU6()
        elif op == "elu":
            alpha, scale, input_scale = (float(arg(i, n, 1.0)) for i, n in ((1, "alpha"), (2, "scale"), (3, "input_scale")))
            if (scale, input_scale) != (1.0, 1.0):
                raise UnsupportedOperation(f"{_where(node)} uses scale={scale}, input_scale={input_scale}; only plain ELU "
                                           "is supported")
            layer = nn.ELU(alpha)
        elif op == "celu":
            layer = nn.CELU(float(arg(1, "alpha", 1.0)))
        elif op == "gelu":
            layer = nn.GELU(str(node.kwargs.get("approximate", "none")))
        elif op == "softplus":
            layer = nn.Softplus(float(arg(1, "beta", 1.0)), float(arg(2, "threshold", 20.0)))
        else:
            simple = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "selu": nn.SELU, "log_sigmoid": nn.LogSigmoid,
                      "hardsigmoid": nn.Hardsigmoid, "silu": nn.SiLU, "mish": nn.Mish, "hardswish": nn.Hardswish}
            layer = simple[op]()
        layer.origin = _where(node)
        return self._then(self._input(node, values), layer, node)

    def _relu_split_form(self, node, op: str, values) -> _Value:
        """PReLU and abs as the same function written with a ReLU: prelu(x) = relu(x) + a min(x, 0)
        and |x| = relu(x) - min(x, 0), a `Residual` of a ReLU and a clamp at 0 times a constant. Both
        are exact rewrites (piecewise linear with one kink at 0), so every engine bounds them with
        its ReLU relaxation (IBP is exact on PReLU with 0 <= a <= 1) and branch and bound splits
        that ReLU, which decides the kink for both branches."""
        v = self._input(node, values)
        if op == "abs":
            scale = -torch.ones((), dtype=self.example.dtype)
        else:
            a = self.const(node.args[1])
            if a is None:
                raise UnsupportedOperation(f"{_where(node)} has a computed slope; only a constant slope is supported")
            a = a.to(self.example.dtype).reshape(-1)
            if a.numel() == 1:
                scale = a.reshape(())
            elif not v.shape or a.numel() != v.shape[0]:
                raise UnsupportedOperation(f"{_where(node)} has {a.numel()} slopes for {v.shape[0] if v.shape else 1} "
                                           "channels")
            else:  # one slope per channel: axis 1 of (N, C, ...)
                scale = a.reshape(-1, *([1] * (len(v.shape) - 1)))
        res = Residual(nn.Sequential(nn.ReLU()), nn.Sequential(Clip(None, 0.0), ElementwiseAffine(scale.clone(), None)))
        res.origin = _where(node)
        return self._then(v, res, node)

    def _batch_norm(self, node, op: str, values) -> _Value:
        a = list(node.args)
        v = self._input(node, values)
        w, b = self.const(a[1]) if a[1] is not None else None, self.const(a[2]) if a[2] is not None else None
        if op == "batch_norm":
            rm, rv, training, eps = a[3], a[4], a[5], a[7]
        elif op == "_native_batch_norm_legit_no_training":
            rm, rv, training, eps = a[3], a[4], False, a[6]
        else:
            rm, rv, training, eps = a[3], a[4], a[5], a[7]
        mean, var = self.const(rm) if rm is not None else None, self.const(rv) if rv is not None else None
        channels = v.shape[0]
        bn = (nn.BatchNorm2d if len(v.shape) == 3 else nn.BatchNorm1d)(channels, eps=float(eps), affine=w is not None,
                                                                         track_running_stats=mean is not None)
        if w is not None:
            bn.weight.data, bn.bias.data = w.clone(), b.clone()
        if mean is not None:
            bn.running_mean.data, bn.running_var.data = mean.clone(), var.clone()
        bn.train(bool(training) or mean is None)
        return self._then(v, bn, node)

    def _arith(self, node, op: str, values) -> _Value:
        x, y = node.args[0], node.args[1]
        alpha = node.kwargs.get("alpha", node.args[2] if len(node.args) > 2 else 1)
        vx = values.get(x.name) if isinstance(x, torch.fx.Node) else None
        vy = values.get(y.name) if isinstance(y, torch.fx.Node) else None
        if vx is not None and vy is not None:
            if op != "add" or alpha != 1:
                raise UnsupportedOperation(f"{_where(node)} combines two computed tensors by {op}; only a plain add "
                                           "(a residual connection) is supported")
            return self._residual(node, vx, vy)
        if vx is None and vy is None:
            return None  # constants only: folded by its consumers
        v, c = (vx, self.const(y)) if vx is not None else (vy, self.const(x))
        if c is None:
            raise UnsupportedOperation(f"{_where(node)} uses an operand that is neither computed nor constant")
        c = c.to(self.example.dtype)
        if c.dim() > len(v.shape) + 1 or (c.dim() == len(v.shape) + 1 and c.shape[0] != 1):
            raise UnsupportedOperation(f"{_where(node)} uses a constant with a batch dimension")
        if c.dim() == len(v.shape) + 1:
            c = c[0]
        on_left = vx is None
        one = torch.ones(())
        if op == "add":
            layer = ElementwiseAffine(one, c * alpha)
        elif op == "sub" and not on_left:
            layer = ElementwiseAffine(one, -c * alpha)
        elif op == "sub":  # c - alpha x
            layer = ElementwiseAffine(-alpha * one, c)
        elif op == "rsub":  # rsub(x, c) = c - alpha x
            layer = ElementwiseAffine(-alpha * one, c)
        elif op == "mul":
            layer = ElementwiseAffine(c, None)
        elif op == "div" and not on_left:
            layer = ElementwiseAffine(1.0 / c, None)
        else:
            raise UnsupportedOperation(f"{_where(node)} divides by a computed tensor")
        return self._then(v, layer, node)

    def _residual(self, node, a: _Value, b: _Value) -> _Value:
        p = _fork(a, b)
        body, shortcut = a.layers[p:], b.layers[p:]
        res = Residual(nn.Sequential(*body), nn.Sequential(*shortcut) if shortcut else None)
        return _Value(a.layers[:p] + [res], self._out_shape(node))

    def _concat(self, node, values) -> _Value:
        """aten.cat of computed tensors along a feature axis: the layers they share, then one `Concat`
        whose branches are the rest of each (an empty rest is the shared value itself)."""
        parts = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        inputs = [values.get(p.name) if isinstance(p, torch.fx.Node) else None for p in parts]
        if not inputs or any(v is None for v in inputs):
            raise UnsupportedOperation(f"{_where(node)} concatenates a constant tensor with computed ones; only tensors "
                                       "computed from the model input can be concatenated")
        rank = len(inputs[0].shape) + 1  # with the batch axis
        if int(dim) % rank == 0:
            raise UnsupportedOperation(f"{_where(node)} concatenates along the batch dimension; each point must be "
                                       "computed on its own")
        p = _fork(*inputs)
        branches = [nn.Sequential(*v.layers[p:]) if len(v.layers) > p else nn.Identity() for v in inputs]
        layer = Concat(branches, int(dim) % rank)
        layer.origin = _where(node)
        return _Value(inputs[0].layers[:p] + [layer], self._out_shape(node))


def _fork(*values: _Value) -> int:
    """How many leading layers the values share (the same module objects): where their branches fork."""
    p = 0
    while all(p < len(v.layers) for v in values) and all(v.layers[p] is values[0].layers[p] for v in values):
        p += 1
    return p


def _pair(v):
    """An ATen int list ([2] or [2, 2]) or int as the int / tuple nn.MaxPool2d takes; None or [] stays empty."""
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        return None
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[0])) if len(v) == 1 else tuple(int(t) for t in v)
    return int(v)


def _is_batch(dim, batch: int) -> bool:
    try:
        return int(dim) == batch
    except (TypeError, ValueError):
        return True  # a symbolic batch size
