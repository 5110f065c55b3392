"""Lower bounds of C f(x) + d over an input box for ReLU chains: IBP, CROWN and alpha-CROWN.

The model is a chain (nn.Sequential, possibly nested, possibly wrapped in `Normalized`) of affine
layers (Linear, Conv2d, eval-mode BatchNorm1d/2d, Flatten, Reshape, Permute, ElementwiseAffine, Identity)
and ReLUs. It is split into affine blocks z_0 = A_0(x), z_i = A_i(relu(z_{i-1})), output z_L.

- IBP (Gowal et al. 2018): centre/radius through affine layers, c' = W c + b, r' = |W| r; the
  last affine block is merged with the specification (C A_L) before taking the bound.
- CROWN (Zhang et al. 2018, Thm 3.2): linear bounds propagated backward from each ReLU's input
  and from the specification; unstable ReLUs (l < 0 < u) use the upper line u (z - l) / (u - l)
  and the lower line a z with a = 1 if u > -l else 0 (the adaptive choice). Intermediate bounds
  are intersected with IBP's, which is sound and never looser.
- alpha-CROWN (Xu et al. 2021, sec. 3.1): the lower slopes a in [0, 1] become variables, one set
  per bounded quantity (each intermediate layer and the specification), optimised by projected
  Adam (lr 0.1, betas 0.9/0.999, as auto_LiRPA's defaults) on the specification's bound; every iterate is a sound bound, so
  the best bound per row over the iterations is kept.

All bounds are sound for any slopes in [0, 1]; floating point error is guarded by computing in
float64. Engines run on the device of the model's parameters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robustcli.certify.deadline import DeadlineReached, check_deadline
from robustcli.certify.conv_patches import bn_affine, conv_input_vjp, layer_shapes, patch_lower, patchable
from robustcli.certify.onnx_layers import ElementwiseAffine, Permute, Reshape, Slice

# Most slope variables alpha-CROWN optimises for intermediate layers (float64: 2 GiB), see alpha_crown_spec.
ALPHA_ELEMENTS = 2**28

# AvgPool2d / AdaptiveAvgPool2d are linear with nonnegative weights, so |W| r = pool(r) (ibp_affine's default).
AFFINE = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten, Reshape, ElementwiseAffine, nn.Identity,
          nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, Permute, Slice)


class NotAChain(ValueError):
    """The model is not a chain of supported affine layers and ReLUs."""


def chain_layers(model: nn.Module) -> list[nn.Module]:
    """Flatten nested Sequentials (and the `Normalized` wrapper) into one list of layers."""
    from robustcli.core.nn import Normalized

    if isinstance(model, Normalized):
        norm = ElementwiseAffine(1.0 / model.std[0], -model.mean[0] / model.std[0])
        return [norm] + chain_layers(model.model)
    if isinstance(model, nn.Sequential):
        return [m for child in model for m in chain_layers(child)]
    if isinstance(model, (nn.ReLU, *AFFINE)):
        if isinstance(model, (nn.BatchNorm1d, nn.BatchNorm2d)) and (model.training or model.running_mean is None):
            raise NotAChain("BatchNorm must be in eval mode with running statistics")
        return [model]
    raise NotAChain(f"layer {type(model).__name__} is not supported by the chain bound engines")


@dataclass
class Chain:
    """Affine blocks separated by ReLUs, with the shapes (per point) of every block's input/output."""

    blocks: list[list[nn.Module]]
    in_shapes: list[tuple[int, ...]]
    out_shapes: list[tuple[int, ...]]
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, model: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> "Chain":
        layers = chain_layers(model)
        blocks: list[list[nn.Module]] = [[]]
        for m in layers:
            if isinstance(m, nn.ReLU):
                blocks.append([])
            else:
                blocks[-1].append(m)
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        blocks = [[_as_dtype(m, dtype) for m in b] for b in blocks]
        in_shapes, out_shapes = [], []
        x = torch.zeros(1, *input_shape, dtype=dtype, device=device)
        with torch.no_grad():
            for b in blocks:
                in_shapes.append(tuple(x.shape[1:]))
                for m in b:
                    x = m(x)
                out_shapes.append(tuple(x.shape[1:]))
        return cls(blocks, in_shapes, out_shapes, dtype, device)

    def layer_shapes(self, i: int) -> list[tuple[int, ...]]:
        """Per-point shapes before block i's first layer and after each of its layers (computed once)."""
        cache = self.__dict__.setdefault("_layer_shapes", {})
        if i not in cache:
            cache[i] = layer_shapes(self.blocks[i], self.in_shapes[i], self.dtype, self.device)
        return cache[i]

    def dense(self, i: int, max_elements: int = 2**25) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Block i as a dense matrix and bias (n_out, n_in), (n_out,), computed once; None if too large."""
        cache = self.__dict__.setdefault("_dense", {})
        if i not in cache:
            n_out, n_in = _numel(self.out_shapes[i]), _numel(self.in_shapes[i])
            if n_out * n_in > max_elements:
                cache[i] = None
            else:
                eye = torch.eye(n_out, dtype=self.dtype, device=self.device).reshape(n_out, *self.out_shapes[i])
                w, b = back_affine(self.blocks[i], self.in_shapes[i], eye)
                cache[i] = (w.reshape(n_out, n_in), b)
        return cache[i]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _as_dtype(m: nn.Module, dtype: torch.dtype) -> nn.Module:
    import copy

    m = copy.deepcopy(m)
    m.eval()
    m.requires_grad_(False)  # bounds are functions of the input box only
    return m.to(dtype)


# -- affine maps ---------------------------------------------------------------------------------
def _per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, *([1] * (x.dim() - 2)))


def ibp_affine(m: nn.Module, c: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and radius through one affine layer: c' = m(c), r' = |W| r."""
    if isinstance(m, nn.Linear):
        return m(c), F.linear(r, m.weight.abs())
    if isinstance(m, nn.Conv2d):
        return m(c), F.conv2d(r, m.weight.abs(), None, m.stride, m.padding, m.dilation, m.groups)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale, _ = bn_affine(m)
        return m(c), r * _per_channel(scale.abs(), r)
    if isinstance(m, ElementwiseAffine):
        return m(c), r * m.scale.abs()
    return m(c), m(r)  # Flatten, Reshape, Identity, Permute, Slice (0/1 weights: |W| r = W r)


def back_affine(block: list[nn.Module], in_shape: tuple[int, ...], A: torch.Tensor,
                shapes: list[tuple[int, ...]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For rows A (R, *out_shape) of a linear function of the block's output, return (A W, A b):
    the same function of the block's input, as rows (R, *in_shape) and a constant (R,).
    `shapes`: the block's `layer_shapes`, if the caller has them."""
    bias = torch.zeros(A.shape[0], dtype=A.dtype, device=A.device)
    if not block:
        return A, bias
    if A.dim() == 2 and len(block) <= 2 and isinstance(block[-1], nn.Linear) and all(isinstance(m, (nn.Flatten, nn.Identity)) for m in block[:-1]):
        lin = block[-1]
        if lin.bias is not None:
            bias = A @ lin.bias
        return (A @ lin.weight).reshape(A.shape[0], *in_shape), bias
    fast = _back_layers(block, in_shape, A, shapes)
    if fast is not None:
        return fast
    # Generic: the block is affine, so A W is the vector-Jacobian product at any point.
    with torch.enable_grad():
        x = torch.zeros(A.shape[0], *in_shape, dtype=A.dtype, device=A.device, requires_grad=True)
        y = x
        for m in block:
            y = m(y)
        b = y[0].detach()
        (aw,) = torch.autograd.grad(y, x, grad_outputs=A, create_graph=A.requires_grad)
    return aw, (A * b).flatten(1).sum(1)


def _conv_transpose(A: torch.Tensor, m: nn.Conv2d, s_in: tuple[int, ...]) -> torch.Tensor:
    """A (R, O, H', W') times the convolution's matrix transposed, as (R, *s_in)."""
    return conv_input_vjp(A, m, tuple(s_in[1:]), m.padding)  # type: ignore[arg-type]


def _back_layers(block: list[nn.Module], in_shape: tuple[int, ...], A: torch.Tensor,
                 shapes: list[tuple[int, ...]] | None = None):
    """(A W, A b) layer by layer with each layer's transpose (conv_transpose2d, W^T, diagonal
    scales): no forward pass. None if some layer has no explicit transpose here (the caller then
    uses a vector-Jacobian product)."""
    shapes = shapes if shapes is not None else layer_shapes(block, in_shape, A.dtype, A.device)
    bias = torch.zeros(A.shape[0], dtype=A.dtype, device=A.device)
    for m, s_in, s_out in zip(reversed(block), reversed(shapes[:-1]), reversed(shapes[1:])):
        R = A.shape[0]
        if isinstance(m, nn.Linear):
            if m.bias is not None:
                bias = bias + A.reshape(R, -1) @ m.bias
            A = A.reshape(R, -1) @ m.weight
        elif isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and isinstance(m.padding, tuple):
            if m.bias is not None:
                bias = bias + A.reshape(R, s_out[0], -1).sum(2) @ m.bias
            A = _conv_transpose(A.reshape(R, *s_out), m, s_in)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            scale, shift = bn_affine(m)
            At = A.reshape(R, *s_out)
            per = (lambda v: v.view(1, -1, *([1] * (len(s_out) - 1))))  # noqa: E731
            bias = bias + (At * per(shift)).reshape(R, -1).sum(1)
            A = At * per(scale)
        elif isinstance(m, ElementwiseAffine):
            At = A.reshape(R, *s_out)
            bias = bias + (At * m.shift).reshape(R, -1).sum(1)
            A = At * m.scale
        elif isinstance(m, (nn.Flatten, Reshape, nn.Identity, nn.Dropout)):
            pass
        elif isinstance(m, Permute):  # rows over the output's axes, read back in the input's order
            A = A.reshape(R, *s_out).permute(*m.inverse)
        elif hasattr(m, "transpose_rows"):  # a linear layer that knows its transpose (maxpool_relus.Gather)
            A = m.transpose_rows(A.reshape(R, *s_out), s_in)
        else:
            return None
        A = A.reshape(R, *s_in)
    return A, bias


# -- IBP ------------------------------------------------------------------------------------------
def ibp_intermediate(chain: Chain, lo: torch.Tensor, hi: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Box bounds (l, u) of every ReLU input z_0 .. z_{L-1}, each (B, *shape)."""
    c, r = (hi + lo) / 2, (hi - lo) / 2
    out = []
    for i, block in enumerate(chain.blocks[:-1]):
        for m in block:
            c, r = ibp_affine(m, c, r)
        out.append((c - r, c + r))
        l, u = F.relu(c - r), F.relu(c + r)
        c, r = (u + l) / 2, (u - l) / 2
    return out


def ibp_spec(chain: Chain, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
             bounds: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
    """Lower bound (B, K) of C z_L + d by IBP, with C merged into the last affine block."""
    bounds = bounds if bounds is not None else ibp_intermediate(chain, lo, hi)
    if bounds:
        l, u = (F.relu(b) for b in bounds[-1])
    else:
        l, u = lo, hi
    A = C.reshape(C.shape[0], *chain.out_shapes[-1])
    A, bias = back_affine(chain.blocks[-1], chain.in_shapes[-1], A)
    c, r = (u + l) / 2, (u - l) / 2
    Af = A.flatten(1)
    return c.flatten(1) @ Af.T - r.flatten(1) @ Af.abs().T + bias + d


# -- CROWN ----------------------------------------------------------------------------------------
def _relu_lines(l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Upper slope/intercept, default (adaptive) lower slope, and the unstable mask."""
    unstable = (l < 0) & (u > 0)
    denom = torch.where(unstable, u - l, torch.ones_like(u))
    up_s = torch.where(unstable, u / denom, (l >= 0).to(u.dtype))
    up_t = torch.where(unstable, -l * u / denom, torch.zeros_like(u))
    low_s = torch.where(unstable, (u > -l).to(u.dtype), (l >= 0).to(u.dtype))
    return up_s, up_t, low_s, unstable


def _relax_rows(A: torch.Tensor, low_s, up_s, up_t, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows A (B, R, n) of a ReLU's output taken to its input through CROWN's lines: a positive
    coefficient takes the lower line, a negative one the upper line, whose intercept up_t adds to
    the constant. Split as A = pos + neg (one of them is exactly zero per entry) so that no
    broadcast `where` runs (slow on CPU); in place where nothing needs gradients."""
    B = A.shape[0]
    neg = A.clamp(max=0)
    bias = bias + torch.bmm(neg, up_t.expand(B, 1, -1).transpose(1, 2)).squeeze(2)
    if torch.is_grad_enabled() and (A.requires_grad or low_s.requires_grad):
        return bias, (A - neg) * low_s + neg * up_s
    pos = A - neg
    return bias, pos.mul_(low_s).add_(neg.mul_(up_s))


def backward_lower(
    chain: Chain,
    upto: int,
    A: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    bounds: list[tuple[torch.Tensor, torch.Tensor]],
    alphas: list[torch.Tensor] | None = None,
    split_terms: list[torch.Tensor | None] | None = None,
    record: dict[int, torch.Tensor] | None = None,
    ball: tuple[torch.Tensor, torch.Tensor] | None = None,
    through_block: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Lower bound (B, R) of A . z_upto over the box, A (R, *shape of z_upto) or (B, R, ...).

    `through_block` = (A W, A b) of block `upto` already computed (B, R, n_in), (B, R): `A` is
    then ignored (intermediate bounds gather rows of the block's dense matrix instead).

    `alphas[j]` (B, R, n_j) or None: lower slopes for ReLU j's unstable neurons (else adaptive).
    `split_terms[j]` (B, R, n_j): Lagrangian terms -beta * sign added to the coefficients of z_j
    (beta-CROWN, Wang et al. 2021, eq. 7; see certify/bab.py). `record[j]` receives the
    coefficients of ReLU j's output, which branching heuristics read, and `record[-1]` those of the input.
    B is the batch of the intermediate bounds (domains); the input box may have batch 1.
    `ball` = (centre (B, *input), radius (B,)): the input set is also inside this L2 ball; the
    linear bound's minimum over the ball, A x0 - radius ||A||_2 (dual norm), is a second sound
    lower bound and the larger of the two is returned.
    """
    B = bounds[0][0].shape[0] if bounds else lo.shape[0]
    if through_block is not None:
        A, bias = through_block
        R = A.shape[1]
    else:
        R = A.shape[-1 - len(chain.out_shapes[upto])]
        A = A.expand(B, *A.shape[-1 - len(chain.out_shapes[upto]):]) if A.dim() == 1 + len(chain.out_shapes[upto]) else A
        bias = torch.zeros(B, R, dtype=A.dtype, device=A.device)
    for j in range(upto, -1, -1):
        if j < upto or through_block is None:
            flat = A.reshape(B * R, *chain.out_shapes[j])
            aw, b = back_affine(chain.blocks[j], chain.in_shapes[j], flat, chain.layer_shapes(j))
            A = aw.reshape(B, R, -1)
            bias = bias + b.reshape(B, R)
        if j == 0:
            break
        l, u = (t.reshape(B, 1, -1) for t in bounds[j - 1])
        up_s, up_t, low_s, unstable = _relu_lines(l, u)
        if alphas is not None and alphas[j - 1] is not None:
            low_s = torch.where(unstable, alphas[j - 1], low_s)
        if record is not None:
            record[j - 1] = A
        bias, A = _relax_rows(A, low_s, up_s, up_t, bias)
        if split_terms is not None and split_terms[j - 1] is not None:
            A = A + split_terms[j - 1]
    if record is not None:
        record[-1] = A  # coefficients of the input (input branching reads them)
    c = ((hi + lo) / 2).reshape(lo.shape[0], 1, -1)
    r = ((hi - lo) / 2).reshape(lo.shape[0], 1, -1)
    c, r = c.expand(A.shape[0], 1, -1), r.expand(A.shape[0], 1, -1)
    out = torch.einsum("brn,bxn->br", A, c) - torch.einsum("brn,bxn->br", A.abs(), r)
    if ball is not None:
        x0, radius = ball
        out = torch.maximum(out, (A * x0.reshape(x0.shape[0], 1, -1)).sum(-1) - radius.reshape(-1, 1) * A.norm(dim=-1))
    return out + bias


def _eye_rows(shape: tuple[int, ...], dtype, device) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= s
    eye = torch.eye(n, dtype=dtype, device=device)
    return torch.cat([eye, -eye]).reshape(2 * n, *shape)  # lower bounds of z and of -z


def crown_intermediate(
    chain: Chain, lo: torch.Tensor, hi: torch.Tensor, alphas: list[list[torch.Tensor]] | None = None,
    base: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ball: tuple[torch.Tensor, torch.Tensor] | None = None,
    splits: list[torch.Tensor] | None = None,
    deadline: float | None = None,
    settled: torch.Tensor | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """CROWN bounds of every ReLU input, each intersected with `base` (IBP unless given).

    `splits[j]` (B, n_j) int8: +1 / -1 where branch and bound fixed neuron j active (z >= 0) /
    inactive (z <= 0) in that domain; its bounds are clamped before the next layer is bounded, so
    every later layer's bounds are those of the sub-problem (beta-CROWN's refreshed bounds,
    without multipliers on the intermediate objectives). `settled` (B,) int: per point, the last
    layer whose `base` bounds already are the sub-problem's (branch and bound's child domain: the
    parent's refreshed bounds hold for every layer up to the one of its newest split, since a split
    at layer k changes only the bounds of layers after k); those layers are only clamped.

    Without `alphas`, only neurons that are unstable under the IBP bound (refreshed from the
    tighter bounds of the layer before) get a backward pass: a stable neuron's relaxation is exact
    whatever its bounds, so tightening them cannot change any later bound. Rows are gathered per
    point (each point its own unstable set, padded to the batch's largest). Past `deadline`
    (time.monotonic()) it raises DeadlineReached (certify/deadline.py), checked between parts."""
    base = base if base is not None else ibp_intermediate(chain, lo, hi)
    if alphas is None:
        return _crown_intermediate_unstable(chain, lo, hi, base, ball, splits, deadline, settled)
    bounds: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i in range(len(chain.blocks) - 1):
        check_deadline(deadline)
        shape = chain.out_shapes[i]
        n = base[i][0][0].numel()
        rows = _eye_rows(shape, chain.dtype, chain.device)
        low = backward_lower(chain, i, rows, lo, hi, bounds, alphas[i] if alphas is not None else None, ball=ball)
        B = lo.shape[0]
        l_new, u_new = low[:, :n].reshape(B, *shape), -low[:, n:].reshape(B, *shape)
        # The value is the intersection with `base`; the gradient is l_new's everywhere, so a slope
        # whose bound is (still) looser than the base keeps being optimised instead of being cut off.
        l_cap, u_cap = torch.maximum(l_new, base[i][0]), torch.minimum(u_new, base[i][1])
        bounds.append((l_new + (l_cap - l_new).detach(), u_new + (u_cap - u_new).detach()))
    return bounds


def _ibp_exact(block: list[nn.Module]) -> bool:
    """IBP is exact on a box for elementwise affine maps around at most one Linear/Conv2d: the box
    maps to a box, and each output of one linear map has the interval |w| r around its centre."""
    mixing = [m for m in block if isinstance(m, (nn.Linear, nn.Conv2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d))]
    return len(mixing) <= 1


def clamp_split(bl, bu, s):
    """Bounds (l, u) with branch and bound's split neurons clamped: l >= 0 where s > 0 (fixed active),
    u <= 0 where s < 0 (fixed inactive); s None: unchanged. Shared by the chain and graph engines."""
    if s is None:
        return bl, bu
    return torch.where(s > 0, bl.clamp(min=0), bl), torch.where(s < 0, bu.clamp(max=0), bu)


def _crown_intermediate_unstable(chain, lo, hi, base, ball, splits=None, deadline=None, settled=None):
    bounds: list[tuple[torch.Tensor, torch.Tensor]] = []
    # With splits, layers up to the first split layer keep their (clamped) base bounds: nothing
    # before them changed, so recomputing would give the base bounds again.
    first_split = -1
    if splits is not None:
        split_layers = [j for j, s in enumerate(splits) if bool((s != 0).any())]
        first_split = split_layers[0] if split_layers else len(splits)
    if settled is not None:
        first_split = max(first_split, int(settled.min()))
    for i in range(len(chain.blocks) - 1):
        shape = chain.out_shapes[i]
        bl, bu = base[i]
        B = bl.shape[0]
        bl, bu = bl.reshape(B, -1), bu.reshape(B, -1)
        s_i = None if splits is None else splits[i]
        if i <= first_split and splits is not None:
            bl, bu = clamp_split(bl, bu, s_i)
            bounds.append((bl.reshape(B, *shape), bu.reshape(B, *shape)))
            continue
        if i > 0:  # IBP through block i from the (tighter) bounds of the ReLU before it
            pl, pu = (F.relu(t) for t in bounds[-1])
            c, r = (pu + pl) / 2, (pu - pl) / 2
            for m in chain.blocks[i]:
                c, r = ibp_affine(m, c, r)
            bl, bu = torch.maximum(bl, (c - r).reshape(B, -1)), torch.minimum(bu, (c + r).reshape(B, -1))
        bl, bu = clamp_split(bl, bu, s_i)
        unstable = (bl < 0) & (bu > 0)
        if settled is not None:  # points whose bounds of this layer are already the sub-problem's
            unstable &= (settled < i).unsqueeze(1)
        k = int(unstable.sum(1).max()) if unstable.numel() else 0
        if k == 0 or (i == 0 and ball is None and _ibp_exact(chain.blocks[0])):
            bounds.append((bl.reshape(B, *shape), bu.reshape(B, *shape)))
            continue
        idx = torch.argsort(unstable.to(torch.int8), dim=1, descending=True, stable=True)[:, :k]
        valid = unstable.gather(1, idx)
        low = _rows_lower_by_points(chain, i, idx, valid, lo, hi, bounds, ball, deadline)
        inf = torch.tensor(float("inf"), dtype=chain.dtype, device=chain.device)
        l_new = bl.scatter_reduce(1, idx, torch.where(valid, low[:, :k], -inf), "amax")
        u_new = bu.scatter_reduce(1, idx, torch.where(valid, -low[:, k:], inf), "amin")
        # l_new > u_new can only mean the sub-problem is empty (contradictory splits); branch and bound reads it so.
        bounds.append((l_new.reshape(B, *shape), u_new.reshape(B, *shape)))
    return bounds


# Coefficients of one backward pass are computed for a group of points at a time, and a point's
# rows in equal parts, at most this many numbers of the widest layer per part (patch rows: at
# most _PATCH_ROWS neurons per part). Small working sets stay in cache and in the allocator's heap:
# with larger ones glibc returned the freed top of the heap to the system after every part, and
# re-touching it cost thousands of page faults per point (float64 mnist-cnn, measured: 2^20 ->
# 2^18 took eps 0.02 from 24 to 19 ms a point and the faults from ~2,300 to ~100).
_GROUP_ELEMENTS = 2**18
_PATCH_ROWS = 1024


def _rows_lower_by_points(chain: Chain, i: int, idx: torch.Tensor, valid: torch.Tensor, lo, hi, bounds, ball,
                          deadline: float | None = None) -> torch.Tensor:
    """Lower bounds (B, 2k) of z_i[idx] and -z_i[idx] where `valid` (B, k; true entries first in
    each row), computed in groups of points, each group with only as many rows as its own points
    need (entries past them are left at zero). The parts are for CPU caches and heap; on a GPU
    the whole batch is one pass, as small parts would leave it idle between kernel launches."""
    B, k = idx.shape
    check_deadline(deadline)
    if idx.device.type != "cpu":
        return _rows_lower(chain, i, idx, lo, hi, bounds, ball)
    width = max(_numel(s) for s in (*chain.in_shapes[: i + 1], *chain.out_shapes[: i + 1]))
    step = max(1, _GROUP_ELEMENTS // (2 * k * width))
    patches = patchable(chain.blocks[: i + 1], chain.in_shapes[: i + 1], chain.out_shapes[: i + 1])
    per_call = _PATCH_ROWS if patches else max(1, _GROUP_ELEMENTS // (2 * width))
    if step >= B and per_call >= k:
        return _rows_lower(chain, i, idx, lo, hi, bounds, ball)
    return rows_in_parts(lambda *part: _rows_lower(chain, i, *part), idx, valid, lo, hi, bounds, ball, step, per_call,
                         deadline)


def rows_in_parts(one_pass: Callable, idx: torch.Tensor, valid: torch.Tensor, lo, hi, bounds, ball, step: int,
                  per_call: int, deadline: float | None = None) -> torch.Tensor:
    """Lower bounds (B, 2k) of the rows `idx` (B, k) and their negations, `step` points and at most
    `per_call` rows at a time, each group of points with only as many rows as its own points need
    (`valid`: true entries first in each row; entries past them stay zero). `one_pass(idx, lo, hi,
    bounds, ball)` bounds one part; `bounds` is a list or dict of (lower, upper) per point. Shared by
    the chain and graph engines; past `deadline` it raises DeadlineReached, checked before each part."""
    B, k = idx.shape
    counts = valid.sum(1).tolist()
    part = lambda t, sl: t if t.shape[0] == 1 else t[sl]  # noqa: E731  (the input box may have batch 1)
    out = torch.zeros(B, 2 * k, dtype=lo.dtype, device=lo.device)
    for s in range(0, B, step):
        sl = slice(s, s + step)
        kg = max(counts[sl])
        if kg == 0:
            continue
        if isinstance(bounds, dict):
            bnd = {j: (l[sl], u[sl]) for j, (l, u) in bounds.items()}
        else:
            bnd = [(l[sl], u[sl]) for l, u in bounds]
        b = None if ball is None else (ball[0][sl], ball[1][sl])
        calls = -(-kg // per_call)
        size = -(-kg // calls)  # equal parts
        for r in range(0, kg, size):
            check_deadline(deadline)
            e = min(kg, r + size)
            low = one_pass(idx[sl, r:e], part(lo, sl), part(hi, sl), bnd, b)
            out[sl, r:e], out[sl, k + r : k + e] = low[:, : e - r], low[:, e - r :]
    return out


def _rows_lower(chain: Chain, i: int, idx: torch.Tensor, lo, hi, bounds, ball) -> torch.Tensor:
    B, k = idx.shape
    if patchable(chain.blocks[: i + 1], chain.in_shapes[: i + 1], chain.out_shapes[: i + 1]):
        # the ReLU lines are elementwise, so they keep the bounds' (B, C, H, W) shape
        relus = [(low_s, up_s, up_t) for up_s, up_t, low_s, _ in (_relu_lines(*bounds[j]) for j in range(i))]
        return patch_lower(chain.blocks[: i + 1], chain.in_shapes, chain.out_shapes, idx, relus, lo, hi, ball,
                           chain.__dict__.setdefault("_patch", {}))
    if (dense := chain.dense(i)) is not None:  # rows of the block's matrix: no pass through the block for one-hot rows
        w, b = dense
        wk, bk = w[idx], b[idx]  # (B, k, n_in), (B, k)
        through = (torch.cat([wk, -wk], 1), torch.cat([bk, -bk], 1))
        return backward_lower(chain, i, None, lo, hi, bounds, ball=ball, through_block=through)
    shape = chain.out_shapes[i]
    n = _numel(shape)
    rows = torch.zeros(B, 2 * k, n, dtype=chain.dtype, device=chain.device)
    rows[:, :k].scatter_(2, idx.unsqueeze(2), 1.0)  # basic slices are views: the scatter writes into rows
    rows[:, k:].scatter_(2, idx.unsqueeze(2), -1.0)
    return backward_lower(chain, i, rows.reshape(B, 2 * k, *shape), lo, hi, bounds, ball=ball)


def crown_spec(chain: Chain, lo, hi, C, d, bounds=None, deadline: float | None = None) -> tuple[torch.Tensor, list]:
    bounds = bounds if bounds is not None else crown_intermediate(chain, lo, hi, deadline=deadline)
    A = C.reshape(C.shape[0], *chain.out_shapes[-1])
    return backward_lower(chain, len(chain.blocks) - 1, A, lo, hi, bounds) + d, bounds


def projected_adam_step_(a: torch.Tensor, g: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, it: int, lr: float,
                         beta1: float = 0.9, beta2: float = 0.999) -> None:
    """One Adam step (Kingma & Ba 2015, Alg. 1: bias-corrected moments, eps 1e-8) of slopes `a` on
    gradient `g` of the loss, in place, then the projection onto [0, 1] (alpha-CROWN's slope box,
    Xu et al. 2021 sec. 3.1). `v1`, `v2`: the parameter's first / second moments, updated in place;
    `it`: the 0-based iteration. By hand: importing torch.optim pulls in torch._dynamo, seconds of
    start-up per process."""
    v1.mul_(beta1).add_(g, alpha=1 - beta1)
    v2.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    step = lr * (v1 / (1 - beta1 ** (it + 1))) / ((v2 / (1 - beta2 ** (it + 1))).sqrt() + 1e-8)
    a.sub_(step).clamp_(0, 1)


def alpha_crown_spec(
    chain: Chain, lo, hi, C, d, bounds, *, iterations: int = 20, lr: float = 0.1,
    deadline: float | None = None, stop_when_positive: bool = True,
    on_iteration: Callable[[int, torch.Tensor], None] | None = None,
    tightened_out: list | None = None,
    ball: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """alpha-CROWN: optimise lower slopes for every intermediate layer and the specification.

    `bounds` are CROWN intermediate bounds (kept as a floor: optimised ones are intersected with
    them). Returns the best lower bound (B, K) per row over the iterations; if `tightened_out` is
    a list, it receives the tightest intermediate bounds seen (for branch and bound).

    The intermediate layers' slopes take one value per (bounded neuron, ReLU neuron) pair; when
    those would exceed `ALPHA_ELEMENTS` numbers (wide convolutional layers: 32x32x32 neurons need
    2^31 per layer pair), only the specification's slopes are optimised and the intermediate
    bounds stay CROWN's (sound, less tight). Past `deadline` it stops after the current iteration
    (inside the first one it raises DeadlineReached: no bound yet).
    """
    # C (K, n_out) shared by the batch, or (B, K, n_out) per point.
    B, L, K = lo.shape[0], len(chain.blocks) - 1, C.shape[-2]
    A = C.reshape(*C.shape[:-1], *chain.out_shapes[-1])
    bounds = [(l.detach(), u.detach()) for l, u in bounds]
    # Slopes start at CROWN's adaptive choice so iteration 0 reproduces CROWN.
    def init(rows: int, j: int) -> torch.Tensor:
        l, u = (t.reshape(B, 1, -1) for t in bounds[j])
        return (u > -l).to(chain.dtype).expand(B, rows, -1).clone().requires_grad_(True)

    sizes = [bounds[i][0][0].numel() for i in range(L)]
    pairs = B * sum(2 * sizes[i] * sizes[j] for i in range(L) for j in range(i))
    inter = [[init(2 * sizes[i], j) for j in range(i)] if pairs <= ALPHA_ELEMENTS else [] for i in range(L)]
    optimise_inter = pairs <= ALPHA_ELEMENTS and L > 1
    final = [init(K, j) for j in range(L)]
    params = [a for row in inter for a in row] + final
    if not params or K == 0:  # no ReLU (CROWN is exact) or no margin: nothing to optimise
        with torch.no_grad():
            low = backward_lower(chain, L, A, lo, hi, bounds, ball=ball) + d
        if tightened_out is not None:
            tightened_out[:] = bounds
        return low
    # Adam by hand: importing torch.optim pulls in torch._dynamo, seconds of start-up per process.
    m1 = [torch.zeros_like(a) for a in params]
    m2 = [torch.zeros_like(a) for a in params]
    best = torch.full((B, K), float("-inf"), dtype=chain.dtype, device=chain.device)
    # Every iterate's intermediate bounds are sound, so each iteration starts from the tightest seen
    # so far (auto_LiRPA's alpha-CROWN keeps its best intermediate bounds too): later layers then
    # gain from earlier layers' progress within the same run.
    tightened = [(l.clone(), u.clone()) for l, u in bounds]
    for it in range(iterations):
        with torch.enable_grad():
            try:
                bnd = crown_intermediate(chain, lo, hi, inter, base=tightened, ball=ball,
                                         deadline=deadline) if optimise_inter else bounds
            except DeadlineReached:
                if it == 0:
                    raise
                break
            low = backward_lower(chain, L, A, lo, hi, bnd, final, ball=ball) + d
            best = torch.maximum(best, low.detach())
            for k, (l, u) in enumerate(bnd):
                tl, tu = tightened[k]
                tightened[k] = (torch.maximum(tl, l.detach()), torch.minimum(tu, u.detach()))
            if on_iteration is not None:
                on_iteration(it, best)
            if (stop_when_positive and bool((best > 0).all())) or (deadline is not None and time.monotonic() > deadline):
                break
            loss = -low.clamp(max=1e-2).sum()  # proven rows stop pulling on the shared slopes
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            for a, g, v1, v2 in zip(params, grads, m1, m2):
                if g is not None:
                    projected_adam_step_(a, g, v1, v2, it, lr)
    if tightened_out is not None:
        tightened_out[:] = tightened
    return best
