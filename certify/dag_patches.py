"""CROWN's backward pass on a graph for rows that are single neurons of a convolutional map, kept
as patches (auto_LiRPA's "patches" mode, Xu et al. 2020; certify/conv_patches.py for chains).

A neuron of a convolutional map depends on a window of every map before it, so its CROWN row
(Zhang et al. 2018, Thm 3.2) is kept as that window, a (C, ph, pw) patch per row, while the pass
goes through convolutions, average pooling (a depthwise convolution), elementwise affine maps (BatchNorm,
normalisation), ReLU relaxations, residual adds and channel concatenations. Where two paths meet at a fork (a residual block's body
and shortcut), their windows differ (two 3x3 convolutions against an identity): both are embedded
in the smallest window that holds them (same stride needed) and summed, as the dense pass sums the
two rows. Entries outside a map are zero in every gathered value, so sums over a patch are sums
over the map; the arithmetic is the dense pass's restricted to where the rows are not zero, so
the bounds are equal up to rounding.

`patch_rows_lower` raises `NoPatches` when the graph below the rows has a layer or join this
cannot follow (flat maps, strides that differ at a fork); the caller then uses dense rows.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from robustcli.certify.conv_patches import PatchRows, Window, bn_affine, conv_supported
from robustcli.certify.onnx_layers import ElementwiseAffine

if TYPE_CHECKING:
    from robustcli.certify.dag_bounds import Dag

_PASS = (nn.Identity, nn.Dropout)


class NoPatches(ValueError):
    """The rows cannot be kept as patches through this graph."""


def _pool_as_conv(m: nn.AvgPool2d, channels: int, cache: dict) -> nn.Conv2d:
    """Average pooling (zero padding counted, no ceil mode) as the depthwise convolution it is."""
    key = ("pool", id(m), channels)
    if key not in cache:
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
        k = pair(m.kernel_size)
        stride = pair(m.stride if m.stride is not None else m.kernel_size)
        conv = nn.Conv2d(channels, channels, k, stride, pair(m.padding), groups=channels, bias=False)
        conv = conv.to(device=cache["device"], dtype=cache["dtype"]).requires_grad_(False)
        conv.weight.data.fill_(1.0 / (k[0] * k[1]))
        cache[key] = conv
    return cache[key]


def _pool_ok(m: nn.Module) -> bool:
    return (isinstance(m, nn.AvgPool2d) and not m.ceil_mode and m.divisor_override is None
            and (m.count_include_pad or m.padding in (0, (0, 0))))


def patchable(dag: "Dag", q: int) -> bool:
    """Every node from the input to node q is a (C, H, W) map reached through convolutions, average
    pooling, elementwise affine maps, ReLUs and other elementwise activations (fixed lines), adds and
    channel concatenations (strides are checked on
    the way); a max pooling's relaxation gathers one input per window (not a window-shaped map),
    so rows through it are dense."""
    cache = dag.__dict__.setdefault("_patchable", {})
    if q not in cache:
        ok = True
        for i in dag.ancestors(q):
            n = dag.nodes[i]
            if len(n.shape) != 3 or (n.kind == "concat" and n.axis != 0) or n.kind == "maxpool":
                ok = False
            elif n.kind == "affine" and not all(
                    conv_supported(m) or _pool_ok(m) or isinstance(m, (nn.BatchNorm2d, ElementwiseAffine, *_PASS))
                    for m in n.layers):
                ok = False
        cache[q] = ok
    return cache[q]


def _embed(p: PatchRows, window: Window) -> None:
    """Re-express p's patches in a larger window with the same stride (zeros around)."""
    if p.window == window:
        return
    pads = []
    for o_new, s_new, o, s in zip(window.offset, window.size, p.window.offset, p.window.size):
        before = o_new - o
        pads.append((before, s_new - s - before))
    (t, b), (l, r) = pads
    B, R = p.coef.shape[:2]
    coef = F.pad(p.coef.reshape(B * R, *p.coef.shape[2:]), (l, r, t, b))
    p.coef = coef.reshape(B, R, *coef.shape[1:])
    p.window = window


def _unpair(p: PatchRows) -> None:
    if p.paired:
        p.coef = torch.cat([p.coef, -p.coef], 1)
        p.flat = torch.cat([p.flat, p.flat], 1)
        p.paired = False


def _merge(a: PatchRows, b: PatchRows) -> PatchRows:
    """a + b, rows for the same neurons over the same map, in one window."""
    if a.window.stride != b.window.stride:
        raise NoPatches("different strides meet at a fork")
    if a.paired != b.paired:
        _unpair(a)
        _unpair(b)
    offset = tuple(max(x, y) for x, y in zip(a.window.offset, b.window.offset))
    end = tuple(max(sx - ox, sy - oy) for sx, ox, sy, oy in zip(a.window.size, a.window.offset, b.window.size, b.window.offset))
    window = Window(tuple(o + e for o, e in zip(offset, end)), a.window.stride, offset)  # type: ignore[arg-type]
    _embed(a, window)
    _embed(b, window)
    out = copy.copy(a)
    out.coef = a.coef + b.coef
    out.outside_zeroed = a.outside_zeroed and b.outside_zeroed
    return out


def _relax_with_slopes(p: PatchRows, r: int, lines, alphas: dict[int, torch.Tensor]) -> torch.Tensor:
    """Through ReLU node r's relaxation with optimisable lower slopes kept in patch form: one slope
    per row and window position (B, 2k, C, ph, pw), only read where the neuron is unstable; created
    at CROWN's adaptive slope on first use. Returns the constant the upper line adds."""
    up_s, up_t, low_s, unstable = lines
    _unpair(p)  # the rows for z and -z take different slopes
    g = p.gather(torch.cat([low_s, up_s, up_t, unstable.to(low_s.dtype)], 1))
    c = low_s.shape[1]
    low, up, t, unst = g[:, :, :c], g[:, :, c : 2 * c], g[:, :, 2 * c : 3 * c], g[:, :, 3 * c :]
    if r not in alphas:
        alphas[r] = low.detach().clone().requires_grad_(True)
    low = torch.where(unst > 0, alphas[r], low)
    neg = p.coef.clamp(max=0)
    pos = p.coef - neg
    p.coef = pos * low + neg * up
    p.outside_zeroed = True
    return (neg * t).flatten(2).sum(2)


def patch_rows_lower(dag: "Dag", q: int, idx: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                     bounds: dict, ball: tuple[torch.Tensor, torch.Tensor] | None = None,
                     alphas: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Lower bounds (B, 2k) of v_q[idx] and of -v_q[idx] over the input set, rows kept as patches.
    `bounds[j]` (B, *shape): intervals of the nodes feeding ReLUs (as backward_lower). `alphas`
    (alpha-CROWN): ReLU node -> lower slopes in patch form, filled on the first call (see
    `_relax_with_slopes`); the same rows must come back on later calls."""
    from robustcli.certify.chain_bounds import _relu_lines

    n_q = dag.nodes[q]
    c_out, gh, gw = n_q.shape
    B, k = idx.shape
    dtype, device = dag.dtype, dag.device
    channel, spatial = idx // (gh * gw), idx % (gh * gw)
    start = PatchRows(torch.zeros(B, k, c_out, 1, 1, dtype=dtype, device=device), Window((1, 1), (1, 1), (0, 0)),
                      (spatial // gw, spatial % gw), (gh, gw))
    start.coef.view(B, k, c_out).scatter_(2, channel.unsqueeze(2), 1.0)
    start.paired = True  # k rows e_i stand for e_i and -e_i until a ReLU splits them
    start.map_shape = tuple(n_q.shape)
    state: dict[int, PatchRows] = {q: start}
    bias = torch.zeros(B, 2 * k, dtype=dtype, device=device)

    def add_bias(p: PatchRows, b: torch.Tensor) -> None:
        nonlocal bias
        bias = bias + (torch.cat([b, -b], 1) if p.paired else b)

    def send(j: int, p: PatchRows) -> None:
        state[j] = _merge(state[j], p) if j in state else p

    cache = dag.__dict__.setdefault("_patch_cache", {"device": device, "dtype": dtype})
    for i in range(q, 0, -1):
        p = state.pop(i, None)
        if p is None:
            continue
        n = dag.nodes[i]
        if n.kind == "affine":
            shapes = n.shapes
            for m, s_in, s_out in zip(reversed(n.layers), reversed(shapes[:-1]), reversed(shapes[1:])):
                if isinstance(m, nn.Conv2d):
                    add_bias(p, p.back_conv(m, s_in, cache))
                elif isinstance(m, nn.AvgPool2d):
                    p.back_conv(_pool_as_conv(m, s_in[0], cache), s_in, cache)  # no bias
                elif isinstance(m, nn.BatchNorm2d):
                    scale, shift = bn_affine(m)
                    add_bias(p, p.back_elementwise(scale.view(-1, 1, 1), shift.view(-1, 1, 1), s_out))
                elif isinstance(m, ElementwiseAffine):
                    add_bias(p, p.back_elementwise(m.scale, m.shift, s_out))
                elif not isinstance(m, _PASS):
                    raise NoPatches(type(m).__name__)
            p.map_shape = tuple(dag.nodes[n.parents[0]].shape)
            send(n.parents[0], p)
        elif n.kind == "add":
            for j, parent in enumerate(n.parents):
                send(parent, p if j == len(n.parents) - 1 else copy.copy(p))
        elif n.kind == "concat":
            sizes = [dag.nodes[j].shape[0] for j in n.parents]
            for parent, part in zip(n.parents, p.coef.split(sizes, dim=2)):
                c = copy.copy(p)
                c.coef = part
                c.map_shape = tuple(dag.nodes[parent].shape)
                send(parent, c)
        elif n.kind == "act":
            from robustcli.certify.dag_bounds import _act_lines

            lines = _act_lines(dag, n, bounds[n.parents[0]])
            shape = (-1, *dag.nodes[n.parents[0]].shape)
            maps = [t.reshape(shape) for t in (lines.low_slope, lines.low_icpt, lines.up_slope, lines.up_icpt)]
            if not all(bool(torch.isfinite(t).all()) for t in maps[1::2]):
                raise NoPatches("an activation's input is unbounded")  # dense rows keep 0 * inf out
            bias = bias + p.back_lines(*maps)
            p.map_shape = tuple(dag.nodes[n.parents[0]].shape)
            send(n.parents[0], p)
        else:  # relu
            lines = _relu_lines(*bounds[n.parents[0]])
            if alphas is not None:
                bias = bias + _relax_with_slopes(p, i, lines, alphas)
            else:
                up_s, up_t, low_s, _ = lines
                bias = bias + p.back_relu(low_s, up_s, up_t)  # (B, 2k) whether or not the rows were paired
            p.map_shape = tuple(dag.nodes[n.parents[0]].shape)
            send(n.parents[0], p)
    p = state.get(0)
    if p is None:
        return bias
    return p.lower_over_input(lo, hi, ball) + bias
