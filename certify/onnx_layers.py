"""The few torch layers an ONNX graph needs beyond torch.nn's own: per-element affine maps,
batch-preserving reshapes, clipping, padding, erf, binary operations on computed tensors, and a
graph executor for graphs that are not a chain.

Every layer here acts on each batch element independently. `ElementwiseAffine`, `Reshape`,
`Permute` and `Slice` are affine, so bound engines treat them as affine maps they can evaluate (see certify/chain_bounds.py);
the graph front end (certify/trace.py) reads the others through the ATen operations they run.
"""

from __future__ import annotations

import torch
from torch import nn


class ElementwiseAffine(nn.Module):
    """y = x * scale + shift with constants that broadcast over one batch element (ONNX Add/Sub/Mul/Div)."""

    def __init__(self, scale: torch.Tensor | None, shift: torch.Tensor | None):
        super().__init__()
        dtype = scale.dtype if scale is not None else shift.dtype if shift is not None else torch.float32
        self.register_buffer("scale", scale if scale is not None else torch.ones((), dtype=dtype))
        self.register_buffer("shift", shift if shift is not None else torch.zeros((), dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class Reshape(nn.Module):
    """Reshape each batch element to `shape` (the batch dimension is kept, whatever the ONNX file fixed it to)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Permute(nn.Module):
    """Reorder the axes of each batch element (ONNX Transpose with the batch axis left first, e.g. an
    NHWC input moved to NCHW). A permutation of coordinates: linear, |W| = W, an L-inf box maps to a
    box and an L2 ball to a ball, so bound engines pass centres, radii and rows through it."""

    def __init__(self, perm: tuple[int, ...]):
        super().__init__()
        perm = tuple(int(p) for p in perm)
        if not perm or perm[0] != 0 or sorted(perm) != list(range(len(perm))):
            raise ValueError(f"Permute needs a permutation that keeps the batch axis first, got {perm}")
        self.perm = perm

    @property
    def inverse(self) -> tuple[int, ...]:
        inv = [0] * len(self.perm)
        for i, p in enumerate(self.perm):
            inv[p] = i
        return tuple(inv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.perm)

    def extra_repr(self) -> str:
        return f"perm={self.perm}"


class Slice(nn.Module):
    """Keep index ranges of non-batch axes (ONNX Slice with positive steps, and each output of Split):
    a selection of coordinates, linear with 0/1 weights, so a box maps to the box of the kept
    coordinates and bound engines pass centres and radii through it (rows go back by the transpose:
    zeros where coordinates were dropped)."""

    def __init__(self, ranges: tuple[tuple[int, int, int, int], ...]):
        super().__init__()
        self.ranges = tuple((int(a), int(b), int(e), int(st)) for a, b, e, st in ranges)
        if any(a == 0 or st <= 0 for a, _, _, st in self.ranges):
            raise ValueError(f"Slice keeps the batch axis whole and needs positive steps, got {self.ranges}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index: list[slice] = [slice(None)] * x.dim()
        for axis, begin, end, step in self.ranges:
            index[axis] = slice(begin, end, step)
        return x[tuple(index)]

    def extra_repr(self) -> str:
        return f"ranges={self.ranges}"


class Clip(nn.Module):
    """torch.clamp with constant bounds (ONNX Clip)."""

    def __init__(self, low: float | None, high: float | None):
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(self.low, self.high)


class Pad(nn.Module):
    """F.pad over the non-batch axes (ONNX Pad)."""

    def __init__(self, pads: tuple[int, ...], mode: str, value: float):
        super().__init__()
        self.pads, self.mode, self.value = pads, mode, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        if self.mode == "constant":
            return F.pad(x, self.pads, "constant", self.value)
        return F.pad(x, self.pads, self.mode)


class Erf(nn.Module):
    """The error function elementwise (ONNX Erf, which exporters emit for GELU before opset 20)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x)


class Concat(nn.Module):
    """torch.cat of computed tensors along a non-batch axis (ONNX Concat); only in graph modules."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, self.axis)


class Binary(nn.Module):
    """Add, Sub or Mul of two computed tensors; only in graph modules. Add and Sub are residual
    connections; Mul (x * erf(x / sqrt 2) in exported GELUs, gates) is for attacks only: bound
    engines refuse it by name."""

    OPS = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul}

    def __init__(self, op: str):
        super().__init__()
        if op not in self.OPS:
            raise ValueError(f"Binary supports {', '.join(self.OPS)}, not {op}")
        self.op = op

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.OPS[self.op](a, b)

    def extra_repr(self) -> str:
        return self.op


class OnnxGraph(nn.Module):
    """Runs converted ONNX nodes in topological order over named tensors (graphs that are not a chain)."""

    def __init__(self, input_name: str, output_name: str, steps: list[tuple[nn.Module, list[str], str]]):
        super().__init__()
        self.input_name = input_name
        self.output_name = output_name
        self.layers = nn.ModuleList(m for m, _, _ in steps)
        self.wiring = [(list(ins), out) for _, ins, out in steps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self.input_name: x}
        for layer, (ins, out) in zip(self.layers, self.wiring):
            env[out] = layer(*[env[i] for i in ins])
        return env[self.output_name]


# -- layers for attacks only (forward and backward passes): the bound engines meet them through the
# ATen operations they run (certify/trace.py) or by type (certify/graph.py) and refuse them by name.


class Unary(nn.Module):
    """An elementwise ONNX function of one computed tensor with no torch.nn module of its own; one
    subclass per function, so an engine that refuses it names it (Abs, Exp, Log, Sqrt, Reciprocal).
    Values outside a function's domain give what ONNX and torch both give (NaN, inf); the converter
    accepts Reciprocal only of tensors positive by construction."""

    @staticmethod
    def fn(x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class Abs(Unary):
    fn = staticmethod(torch.abs)


class Exp(Unary):
    fn = staticmethod(torch.exp)


class Log(Unary):
    fn = staticmethod(torch.log)


class Sqrt(Unary):
    fn = staticmethod(torch.sqrt)


class Reciprocal(Unary):
    fn = staticmethod(torch.reciprocal)


UNARY = {cls.__name__: cls for cls in (Abs, Exp, Log, Sqrt, Reciprocal)}


class PReLU(nn.Module):
    """ONNX PRelu with a constant slope of any shape that broadcasts over one point (per channel,
    shared, or per element as Keras writes it): relu(x) + slope * min(x, 0). That equals PRelu bit
    for bit (one of the two terms is exactly 0) and is written with a ReLU, so the bound engines
    read it as a residual of a ReLU and a clamp (certify/trace.py) and bound it exactly as a ReLU."""

    def __init__(self, slope: torch.Tensor):
        super().__init__()
        self.register_buffer("slope", slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) + self.slope * x.clamp(max=0)


def _prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0, x * slope, x)


def _sum(*xs: torch.Tensor) -> torch.Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


def _fold(fn):
    def run(*xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out
    return run


class Pointwise(nn.Module):
    """An ONNX elementwise operation with multidirectional (numpy) broadcasting over computed tensors
    and constants (buffers, at their positions among the operands): Add, Sub, Mul and Div where a
    constant widens each point, division by a computed tensor, Pow, PRelu, Where, comparisons and
    logic (boolean masks), and the variadic Max, Min, Sum and Mean. The converter checks that broadcasting
    keeps every point's values apart (constants carry no batch axis of their own)."""

    OPS = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Pow": torch.pow, "PRelu": _prelu,
           "Where": torch.where, "Max": _fold(torch.maximum), "Min": _fold(torch.minimum), "Sum": _sum,
           "Mean": lambda *xs: _sum(*xs) / len(xs), "Greater": torch.gt, "Less": torch.lt, "Equal": torch.eq,
           "GreaterOrEqual": torch.ge, "LessOrEqual": torch.le, "Not": torch.logical_not, "And": torch.logical_and,
           "Or": torch.logical_or, "Xor": torch.logical_xor}

    def __init__(self, op: str, arity: int, constants: dict[int, torch.Tensor]):
        super().__init__()
        if op not in self.OPS:
            raise ValueError(f"Pointwise supports {', '.join(self.OPS)}, not {op}")
        self.op, self.arity = op, int(arity)
        self.positions = sorted(int(k) for k in constants)
        for k in self.positions:
            self.register_buffer(f"c{k}", constants[k])

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        computed = iter(xs)
        args = [getattr(self, f"c{k}") if k in self.positions else next(computed) for k in range(self.arity)]
        return self.OPS[self.op](*args)

    def extra_repr(self) -> str:
        return f"{self.op}, constants at {self.positions}"


class ToFloat(nn.Module):
    """A boolean mask as 0 / 1 in the module's float dtype (ONNX Cast of a comparison's result); the
    empty buffer follows the module's dtype and device."""

    def __init__(self):
        super().__init__()
        self.register_buffer("like", torch.zeros(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.like.dtype)


class Reduce(nn.Module):
    """An ONNX Reduce* over non-batch axes (Mean, Sum, Max, Min, Prod, L1, L2, SumSquare, LogSumExp)."""

    def __init__(self, op: str, dims: tuple[int, ...], keepdim: bool):
        super().__init__()
        self.op, self.dims, self.keepdim = op, tuple(int(d) for d in dims), bool(keepdim)
        if not self.dims or 0 in self.dims:
            raise ValueError(f"Reduce keeps the batch axis and needs axes, got {self.dims}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, k = self.dims, self.keepdim
        if self.op == "Mean":
            return x.mean(d, keepdim=k)
        if self.op == "Sum":
            return x.sum(d, keepdim=k)
        if self.op == "Max":
            return x.amax(d, keepdim=k)
        if self.op == "Min":
            return x.amin(d, keepdim=k)
        if self.op == "L1":
            return x.abs().sum(d, keepdim=k)
        if self.op == "L2":
            return x.square().sum(d, keepdim=k).sqrt()
        if self.op == "SumSquare":
            return x.square().sum(d, keepdim=k)
        if self.op == "LogSumExp":
            return torch.logsumexp(x, d, keepdim=k)
        if self.op == "Prod":
            for axis in sorted(d, reverse=True):
                x = x.prod(axis, keepdim=k)
            return x
        raise ValueError(f"unknown reduction {self.op}")

    def extra_repr(self) -> str:
        return f"{self.op}, dims={self.dims}, keepdim={self.keepdim}"


class MatMul(nn.Module):
    """torch.matmul of two computed tensors of equal rank >= 3 (attention scores and their use), or of a
    constant matrix on the left of a computed tensor of rank >= 3; the batch axis is a matmul batch axis."""

    def __init__(self, left: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("left", left)

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return torch.matmul(self.left, a) if self.left is not None else torch.matmul(a, b)


class FlatSoftmax(nn.Module):
    """Softmax / LogSoftmax before opset 13: over the axes from `axis` on, taken together (the input
    coerced to 2-D), then reshaped back."""

    def __init__(self, axis: int, log: bool):
        super().__init__()
        self.axis, self.log = int(axis), bool(log)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(self.axis)
        out = torch.log_softmax(flat, -1) if self.log else torch.softmax(flat, -1)
        return out.reshape(x.shape)


class Expand(nn.Module):
    """ONNX Expand / Tile of a computed tensor over non-batch axes: broadcast each point to `shape`, or
    repeat it `repeats` times along each axis."""

    def __init__(self, shape: tuple[int, ...] | None = None, repeats: tuple[int, ...] | None = None):
        super().__init__()
        self.shape = None if shape is None else tuple(int(s) for s in shape)
        self.repeats = None if repeats is None else tuple(int(r) for r in repeats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shape is not None:
            return x.expand(x.shape[0], *self.shape)
        return x.repeat(1, *self.repeats)

    def extra_repr(self) -> str:
        return f"shape={self.shape}" if self.shape is not None else f"repeats={self.repeats}"


class Gather(nn.Module):
    """ONNX Gather of a computed tensor with constant indices along a non-batch axis: the output's
    shape replaces that axis by the indices' shape (a scalar index drops it)."""

    def __init__(self, axis: int, indices: torch.Tensor):
        super().__init__()
        self.axis = int(axis)
        self.register_buffer("indices", indices.to(torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        picked = torch.index_select(x, self.axis, self.indices.reshape(-1))
        shape = x.shape[: self.axis] + self.indices.shape + x.shape[self.axis + 1:]
        return picked.reshape(shape)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, indices={tuple(self.indices.shape)}"


class Resize(nn.Module):
    """F.interpolate over the spatial axes (ONNX Resize in the modes torch shares with it: nearest with
    asymmetric coordinates rounding down, linear and cubic with half_pixel or align_corners)."""

    def __init__(self, size: tuple[int, ...] | None, scale: tuple[float, ...] | None, mode: str,
                 align_corners: bool | None):
        super().__init__()
        self.size, self.scale, self.mode, self.align_corners = size, scale, mode, align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        if self.size is not None:
            return F.interpolate(x, size=self.size, mode=self.mode, align_corners=self.align_corners)
        return F.interpolate(x, scale_factor=self.scale, mode=self.mode, align_corners=self.align_corners,
                             recompute_scale_factor=False)

    def extra_repr(self) -> str:
        return f"size={self.size}, scale={self.scale}, mode={self.mode}, align_corners={self.align_corners}"


class View(nn.Module):
    """Reshape to a literal shape, first axis included: the layers of a graph written for a batch of
    one that `PerPoint` runs on each point (torch's attention export moves that axis around)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Transpose(nn.Module):
    """Any permutation of the axes, the first included (inside `PerPoint` only)."""

    def __init__(self, perm: tuple[int, ...]):
        super().__init__()
        self.perm = tuple(int(p) for p in perm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.perm)

    def extra_repr(self) -> str:
        return f"perm={self.perm}"


class NotBoundable(NotImplementedError):
    """Raised by a layer while the graph front end traces it: the layer says itself why the bound
    engines cannot read it (certify/trace.py passes the reason on as it is)."""


class PerPoint(nn.Module):
    """Runs a graph written for a batch of exactly one on each point of a batch: x[i:i+1] through the
    graph, the results stacked. For files that fix their batch to 1 and move that axis (torch's
    nn.MultiheadAttention export works in (tokens, batch, features) and merges batch and heads), where
    no axis of the graph's tensors is a batch axis the other layers could keep first. Vectorised with
    torch.func.vmap where every operation has a batching rule, else a loop over the points."""

    def __init__(self, graph: nn.Module, vectorised: bool = True):
        super().__init__()
        self.graph = graph
        self.vectorised = vectorised

    def _one(self, point: torch.Tensor) -> torch.Tensor:
        return self.graph(point.unsqueeze(0)).squeeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():  # the graph front end of the bound engines (certify/trace.py)
            raise NotBoundable(
                "the ONNX graph runs point by point (the file fixes its batch to 1 and moves that axis, as "
                "attention exports do), which the bound engines do not read")
        if self.vectorised:
            return torch.func.vmap(self._one)(x)
        return torch.stack([self._one(p) for p in x])
