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
