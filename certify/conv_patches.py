"""CROWN's backward pass for rows that are single neurons of a convolutional layer, kept as patches.

A neuron of a convolution's output depends on a window of the layer's input. Through a chain of
convolutions, ReLUs and elementwise affine maps, the coefficients of its linear bound (CROWN's
Lambda, Zhang et al. 2018, Thm 3.2) stay zero outside a window that grows by one kernel per
convolution. Each row is kept as that window, a (C, ph, pw) patch anchored in the map, instead of
a dense (C, H, W) row: the "patches" mode of auto_LiRPA (Xu et al. 2020). On the small MNIST CNN
a second-layer neuron's row has 256 entries at the first ReLU instead of 3,136, and 100 at the
input instead of 784. The arithmetic is the dense pass's, restricted to where it is not zero, so
the bounds are equal up to rounding.

Geometry: every row of one pass starts at a neuron (c, h, w) of the same map, so one window
(size, stride, offset) describes all rows: row (h, w) covers map positions
h * stride - offset ... h * stride - offset + size - 1. Entries that fall outside the map (a
convolution's zero padding) are kept at zero, so sums over a patch are sums over the map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustcli.certify.onnx_layers import ElementwiseAffine

# Layers a patch passes through: one convolution, or an elementwise affine map, or nothing.
_PASS_THROUGH = (nn.Identity, nn.Dropout)
_ELEMENTWISE = (nn.BatchNorm2d, ElementwiseAffine)


def bn_affine(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm as y = x * scale + shift, per channel."""
    scale = m.weight / torch.sqrt(m.running_var + m.eps) if m.affine else 1.0 / torch.sqrt(m.running_var + m.eps)
    shift = (m.bias if m.affine else 0.0) - m.running_mean * scale
    return scale, shift


@dataclass(frozen=True)
class Window:
    """Where each row's patch lies in the current map (per spatial axis)."""

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]

    def through_conv(self, m: nn.Conv2d) -> "Window":
        """The window at the convolution's input: a kernel wider, strides and paddings compounded."""
        size = tuple((p - 1) * s + d * (k - 1) + 1 for p, s, d, k in zip(self.size, m.stride, m.dilation, m.kernel_size))
        stride = tuple(a * s for a, s in zip(self.stride, m.stride))
        offset = tuple(o * s + p for o, s, p in zip(self.offset, m.stride, m.padding))
        return Window(size, stride, offset)  # type: ignore[arg-type]


def layer_shapes(block: list[nn.Module], in_shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device) -> list[tuple[int, ...]]:
    """The per-point shape before the first layer of `block` and after each layer (one zero pass)."""
    shapes = [tuple(in_shape)]
    x = torch.zeros(1, *in_shape, dtype=dtype, device=device)
    with torch.no_grad():
        for m in block:
            x = m(x)
            shapes.append(tuple(x.shape[1:]))
    return shapes


def conv_supported(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and isinstance(m.padding, tuple)
        and all(isinstance(p, int) for p in m.padding)
    )  # fmt: skip


def patchable(blocks: list[list[nn.Module]], in_shapes: list[tuple[int, ...]], out_shapes: list[tuple[int, ...]]) -> bool:
    """Patches apply and pay: every layer is a convolution, an elementwise affine map or a no-op on
    (C, H, W) maps, and a row's window at the input is smaller than the input map."""
    if not all(len(s) == 3 for s in (*in_shapes, *out_shapes)):
        return False
    layers = [m for b in blocks for m in b]
    if not all(conv_supported(m) or isinstance(m, (*_ELEMENTWISE, *_PASS_THROUGH)) for m in layers):
        return False
    window = Window((1, 1), (1, 1), (0, 0))
    for m in reversed(layers):
        if isinstance(m, nn.Conv2d):
            window = window.through_conv(m)
    return window.size[0] * window.size[1] < in_shapes[0][1] * in_shapes[0][2]


class PatchRows:
    """Rows (B, R, C, ph, pw) of a linear function of one map, with their window and positions."""

    def __init__(self, coef: torch.Tensor, window: Window, pos: tuple[torch.Tensor, torch.Tensor], grid: tuple[int, int]):
        self.coef = coef  # (B, R, C, ph, pw)
        self.window = window
        self.pos = pos  # each (B, R): the row's neuron (h, w) in the starting map
        self.grid = grid  # (H, W) of the starting map

    def gather(self, value: torch.Tensor) -> torch.Tensor:
        """Each row's patch of a map `value` (B or 1, C, H, W): (B, R, C, ph, pw), zero outside the map."""
        n, c, h, w = value.shape
        (sh, sw), (oh, ow), (ph, pw) = self.window.stride, self.window.offset, self.window.size
        gh, gw = self.grid
        right_h = max(0, (gh - 1) * sh + ph - oh - h)
        right_w = max(0, (gw - 1) * sw + pw - ow - w)
        # A window may start above/left of the padded map only if offset < 0, which cannot happen:
        # offsets are sums of paddings times strides.
        padded = F.pad(value, (ow, right_w, oh, right_h))
        cols = F.unfold(padded, (ph, pw), stride=(sh, sw))  # (n, c*ph*pw, Lh*Lw)
        lh = (padded.shape[2] - ph) // sh + 1
        lw = (padded.shape[3] - pw) // sw + 1
        cols = cols.reshape(n, -1, lh, lw)[:, :, :gh, :gw].reshape(n, -1, gh * gw).transpose(1, 2)
        flat = self.pos[0] * gw + self.pos[1]  # (B, R)
        B, R = flat.shape
        if n == 1:
            out = cols[0][flat]
        else:
            out = torch.gather(cols, 1, flat.unsqueeze(2).expand(B, R, cols.shape[2]))
        return out.reshape(B, R, c, ph, pw)

    def back_conv(self, m: nn.Conv2d, in_shape: tuple[int, ...]) -> torch.Tensor:
        """Rows of the convolution's input; returns the constant (B, R) the bias adds."""
        B, R, O, ph, pw = self.coef.shape
        bias = torch.zeros(B, R, dtype=self.coef.dtype, device=self.coef.device)
        if m.bias is not None:
            bias = self.coef.sum((3, 4)) @ m.bias
        self.window = self.window.through_conv(m)
        coef = conv_transpose_unpadded(self.coef.reshape(B * R, O, ph, pw), m, self.window.size)
        inside = self.gather(torch.ones(1, 1, *in_shape[1:], dtype=coef.dtype, device=coef.device))
        self.coef = coef.reshape(B, R, *coef.shape[1:]) * inside  # padding positions carry no variable
        return bias

    def back_elementwise(self, scale: torch.Tensor, shift: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Through y = x * scale + shift (broadcast to `shape`); returns the constant it adds."""
        full = lambda v: torch.broadcast_to(torch.as_tensor(v, dtype=self.coef.dtype, device=self.coef.device), (1, *shape))  # noqa: E731
        bias = (self.coef * self.gather(full(shift))).flatten(2).sum(2)
        self.coef = self.coef * self.gather(full(scale))
        return bias


def conv_transpose_unpadded(a: torch.Tensor, m: nn.Conv2d, size: tuple[int, int]) -> torch.Tensor:
    """a (N, O, ph, pw) times the convolution's matrix transposed, as (N, C, *size): the input
    positions the outputs read, padding included (size = (ph - 1) * stride + dilation * (k - 1) + 1).

    One matmul with the kernel, then each column added at its place: CPU conv_transpose2d and fold
    loop over N in float64, which is most of the work here."""
    if m.groups != 1:
        return F.conv_transpose2d(a, m.weight, None, m.stride, 0, 0, m.groups, m.dilation)
    n, o, ph, pw = a.shape
    c, kh, kw = m.weight.shape[1:]
    cols = a.permute(0, 2, 3, 1).reshape(n * ph * pw, o) @ m.weight.reshape(o, -1)  # (N*L, C*kh*kw)
    if ph == pw == 1 and m.dilation == (1, 1):
        return cols.reshape(n, c, kh, kw)
    dev = a.device
    rows = (torch.arange(ph, device=dev) * m.stride[0]).view(ph, 1, 1, 1, 1) + (torch.arange(kh, device=dev) * m.dilation[0]).view(1, 1, 1, kh, 1)
    cols_ = (torch.arange(pw, device=dev) * m.stride[1]).view(1, pw, 1, 1, 1) + (torch.arange(kw, device=dev) * m.dilation[1]).view(1, 1, 1, 1, kw)
    chan = torch.arange(c, device=dev).view(1, 1, c, 1, 1)
    index = (chan * size[0] * size[1] + rows * size[1] + cols_).reshape(-1)  # (ph, pw, C, kh, kw) order
    out = torch.zeros(c * size[0] * size[1], n, dtype=a.dtype, device=dev)
    out.index_add_(0, index, cols.reshape(n, -1).T)
    return out.T.reshape(n, c, *size)


def patch_lower(
    blocks: list[list[nn.Module]],
    in_shapes: list[tuple[int, ...]],
    out_shapes: list[tuple[int, ...]],
    rows: torch.Tensor,
    relus: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    lo: torch.Tensor,
    hi: torch.Tensor,
    ball: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Lower bounds (B, 2k) of z_i[rows] and of -z_i[rows] over the input box, for the output z_i
    of the last block of `blocks` (rows (B, k): flat neuron indices per point).

    `relus[j]` = (lower slope, upper slope, upper intercept) maps (B, *out_shapes[j]) of the ReLU
    after block j (CROWN's relaxation, already chosen by the caller). `ball` = (centre, radius):
    the input set also lies in this L2 ball; the larger of the box and ball bounds is returned.
    """
    i = len(blocks) - 1
    c_out, gh, gw = out_shapes[i]
    B, k = rows.shape
    dtype, device = lo.dtype, lo.device
    channel, spatial = rows // (gh * gw), rows % (gh * gw)
    coef = torch.zeros(B, 2 * k, c_out, 1, 1, dtype=dtype, device=device)
    channel2 = torch.cat([channel, channel], 1)
    sign = torch.cat([torch.ones(k, dtype=dtype, device=device), -torch.ones(k, dtype=dtype, device=device)])
    coef.view(B, 2 * k, c_out).scatter_(2, channel2.unsqueeze(2), sign.expand(B, 2 * k).unsqueeze(2))
    pos = (torch.cat([spatial // gw] * 2, 1), torch.cat([spatial % gw] * 2, 1))
    p = PatchRows(coef, Window((1, 1), (1, 1), (0, 0)), pos, (gh, gw))
    bias = torch.zeros(B, 2 * k, dtype=dtype, device=device)
    for j in range(i, -1, -1):
        shapes = layer_shapes(blocks[j], in_shapes[j], dtype, device)
        for m, s_in, s_out in zip(reversed(blocks[j]), reversed(shapes[:-1]), reversed(shapes[1:])):
            if isinstance(m, nn.Conv2d):
                bias = bias + p.back_conv(m, s_in)
            elif isinstance(m, nn.BatchNorm2d):
                scale, shift = bn_affine(m)
                bias = bias + p.back_elementwise(scale.view(-1, 1, 1), shift.view(-1, 1, 1), s_out)
            elif isinstance(m, ElementwiseAffine):
                bias = bias + p.back_elementwise(m.scale, m.shift, s_out)
        if j == 0:
            break
        low_s, up_s, up_t = (p.gather(t) for t in relus[j - 1])
        bias = bias + (p.coef.clamp(max=0) * up_t).flatten(2).sum(2)
        p.coef = torch.where(p.coef >= 0, p.coef * low_s, p.coef * up_s)
    centre, radius = p.gather((hi + lo) / 2), p.gather((hi - lo) / 2)
    a = p.coef.flatten(2)
    out = (a * centre.flatten(2)).sum(2) - (a.abs() * radius.flatten(2)).sum(2)
    if ball is not None:
        x0, r = ball
        out = torch.maximum(out, (a * p.gather(x0).flatten(2)).sum(2) - r.reshape(-1, 1) * a.norm(dim=2))
    return out + bias

