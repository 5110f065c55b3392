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
    """Rows (B, R, C, ph, pw) of a linear function of one map, with their window and positions.

    After a transposed convolution a patch may hold coefficients at padding positions (outside the
    map), which carry no variable. They are zeroed lazily (`outside_zeroed`): every value gathered
    for a patch is zero outside the map, so a ReLU's slopes, an elementwise scale and the box's
    centre and radius zero them anyway; a convolution (its bias sum and its transposition, which
    would carry an outside entry back onto positions inside the next map) and the L2 norm need them
    zeroed first."""

    def __init__(self, coef: torch.Tensor, window: Window, pos: tuple[torch.Tensor, torch.Tensor], grid: tuple[int, int]):
        self.coef = coef  # (B, R, C, ph, pw)
        self.window = window
        self.pos = pos  # each (B, R): the row's neuron (h, w) in the starting map
        self.grid = grid  # (H, W) of the starting map
        self.flat = pos[0] * grid[1] + pos[1]  # (B, R)
        self.outside_zeroed = True
        self.map_shape: tuple[int, ...] = ()
        self.paired = False  # rows stand for themselves and their negations (see back_relu)

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
        cols = cols.reshape(n, -1, lh, lw)[:, :, :gh, :gw].reshape(n, -1, gh * gw).transpose(1, 2).contiguous()  # (n, L, D)
        B, R = self.flat.shape
        if n == 1:
            out = cols[0].index_select(0, self.flat.reshape(-1))
        else:  # one row copy per patch: index (B*R,) into (B*L, D)
            L = gh * gw
            rows = (self.flat + torch.arange(B, device=self.flat.device).unsqueeze(1) * L).reshape(-1)
            out = cols.reshape(n * L, -1).index_select(0, rows)
        return out.reshape(B, R, c, ph, pw)

    def zero_outside(self) -> None:
        if not self.outside_zeroed:
            inside = self.gather(torch.ones(1, 1, *self.map_shape[1:], dtype=self.coef.dtype, device=self.coef.device))
            self.coef = self.coef * inside
            self.outside_zeroed = True

    def lower_over_input(self, lo: torch.Tensor, hi: torch.Tensor,
                         ball: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The rows' minimum over the input box [lo, hi] (c a - |a| r with one gather for centre and
        radius), and for an L2 ball (x0, eps) also a x0 - eps ||a||_2, the larger kept; paired rows
        give (B, 2R): the bounds of z and of -z from the same coefficients. Without the bias."""
        cr = self.gather(torch.cat([(hi + lo) / 2, (hi - lo) / 2], 1))
        c_in = lo.shape[1]
        a = self.coef.flatten(2)
        dot, mag = (a * cr[:, :, :c_in].flatten(2)).sum(2), (a.abs() * cr[:, :, c_in:].flatten(2)).sum(2)
        out = torch.cat([dot - mag, -dot - mag], 1) if self.paired else dot - mag
        if ball is not None:
            self.zero_outside()  # the box's gathered values are zero outside the map; x0's norm is not
            a = self.coef.flatten(2)
            x0, r = ball
            dot0, norm = (a * self.gather(x0).flatten(2)).sum(2), r.reshape(-1, 1) * a.norm(dim=2)
            out = torch.maximum(out, torch.cat([dot0 - norm, -dot0 - norm], 1) if self.paired else dot0 - norm)
        return out

    def back_conv(self, m: nn.Conv2d, in_shape: tuple[int, ...], cache: dict | None = None) -> torch.Tensor:
        """Rows of the convolution's input; returns the constant (B, R) the bias adds."""
        B, R, O, ph, pw = self.coef.shape
        bias = torch.zeros(B, R, dtype=self.coef.dtype, device=self.coef.device)
        # Entries at padding positions carry no variable; transposed once more they would land on
        # positions inside the input map (two convolutions with no elementwise map between them).
        self.zero_outside()
        if m.bias is not None:
            bias = self.coef.sum((3, 4)) @ m.bias
        self.window = self.window.through_conv(m)
        coef = conv_transpose_unpadded(self.coef.reshape(B * R, O, ph, pw), m, self.window.size, cache)
        self.coef = coef.reshape(B, R, *coef.shape[1:])
        self.map_shape, self.outside_zeroed = tuple(in_shape), False
        return bias

    def start_at_conv(self, m: nn.Conv2d, channel: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
        """Rows e_(channel, h, w) of the convolution's output taken through it: each is the kernel of
        its channel (a one-hot row's transposed convolution), so no product is formed."""
        B, R = channel.shape
        self.window = self.window.through_conv(m)
        self.coef = m.weight.index_select(0, channel.reshape(-1)).reshape(B, R, *m.weight.shape[1:])
        self.map_shape, self.outside_zeroed = tuple(in_shape), False
        if m.bias is None:
            return torch.zeros(B, R, dtype=self.coef.dtype, device=self.coef.device)
        return m.bias[channel]

    def back_elementwise(self, scale: torch.Tensor, shift: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Through y = x * scale + shift (broadcast to `shape`); returns the constant it adds. The
        gathered scale is zero outside the map, so the result is zero there."""
        full = lambda v: torch.broadcast_to(torch.as_tensor(v, dtype=self.coef.dtype, device=self.coef.device), (1, *shape))  # noqa: E731
        g = self.gather(torch.cat([full(shift), full(scale)], 1))  # one gather for both maps
        c = shape[0]
        bias = (self.coef * g[:, :, :c]).flatten(2).sum(2)
        self.coef = self.coef * g[:, :, c:]
        self.outside_zeroed = True
        return bias

    def back_relu(self, low_s: torch.Tensor, up_s: torch.Tensor, up_t: torch.Tensor) -> torch.Tensor:
        """Through CROWN's relaxation of a ReLU with these (B, C, H, W) lines; returns the constant it
        adds. The gathered slopes are zero outside the map, so the result is zero there.

        If the rows are `paired` (R rows P standing for 2R rows P and -P), the slopes are gathered
        once per pair and the pair splits here: P takes low where P > 0 and up where P < 0, -P the
        other way round, so with P = pos + neg (one of them zero per entry) the rows are
        pos * low + neg * up and -(neg * low + pos * up)."""
        g = self.gather(torch.cat([low_s, up_s, up_t], 1))  # one gather for the three maps
        c = low_s.shape[1]
        low, up, t = g[:, :, :c], g[:, :, c : 2 * c], g[:, :, 2 * c :]
        neg = self.coef.clamp(max=0)
        pos = self.coef - neg
        grad = torch.is_grad_enabled() and (pos.requires_grad or low.requires_grad)
        self.outside_zeroed = True
        if self.paired:
            B, R = self.coef.shape[:2]
            bias = torch.cat([(neg * t).flatten(2).sum(2), -(pos * t).flatten(2).sum(2)], 1)
            self.flat = torch.cat([self.flat, self.flat], 1)
            self.paired = False
            if grad:
                self.coef = torch.cat([pos * low + neg * up, -(neg * low + pos * up)], 1)
                return bias
            out = torch.empty(B, 2 * R, *self.coef.shape[2:], dtype=self.coef.dtype, device=self.coef.device)
            torch.mul(pos, low, out=out[:, :R]).add_(neg * up)
            torch.mul(neg, low, out=out[:, R:]).add_(pos.mul_(up)).neg_()
            self.coef = out
            return bias
        # as chain_bounds._relax_rows: no broadcast `where`
        bias = (neg * t).flatten(2).sum(2)
        if grad:
            self.coef = pos * low + neg * up
        else:
            self.coef = pos.mul_(low).add_(neg.mul_(up))
        return bias


    def back_lines(self, low_s: torch.Tensor, low_t: torch.Tensor, up_s: torch.Tensor, up_t: torch.Tensor) -> torch.Tensor:
        """Through an elementwise activation's lines a_l x + b_l <= f(x) <= a_u x + b_u (each (B, C, H, W),
        certify/activation_lines.py; finite intercepts); returns the constant it adds. As `back_relu`
        with a lower intercept too: P takes (low_s, low_t) where P > 0 and (up_s, up_t) where P < 0,
        -P the other way round."""
        g = self.gather(torch.cat([low_s, up_s, low_t, up_t], 1))
        c = low_s.shape[1]
        low, up, lt, ut = g[:, :, :c], g[:, :, c : 2 * c], g[:, :, 2 * c : 3 * c], g[:, :, 3 * c :]
        neg = self.coef.clamp(max=0)
        pos = self.coef - neg
        self.outside_zeroed = True
        if self.paired:
            bias = torch.cat([(pos * lt + neg * ut).flatten(2).sum(2), -(neg * lt + pos * ut).flatten(2).sum(2)], 1)
            self.flat = torch.cat([self.flat, self.flat], 1)
            self.paired = False
            self.coef = torch.cat([pos * low + neg * up, -(neg * low + pos * up)], 1)
            return bias
        bias = (pos * lt + neg * ut).flatten(2).sum(2)
        self.coef = pos * low + neg * up
        return bias


def conv_input_vjp(a: torch.Tensor, m: nn.Conv2d, in_size: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """a (N, O, H', W') times the matrix of the convolution (with `padding`, input (C, *in_size))
    transposed: the vector-Jacobian product, (N, C, *in_size).

    Float64 (and CUDA): aten's convolution backward, what autograd runs for a convolution's input
    gradient. Float32 on CPU: conv_transpose2d, which reaches oneDNN there. Each was the fastest of
    {matmul with the kernel + index add, conv_transpose2d, convolution backward} for its dtype on
    the MNIST CNN's layers (CPU, one thread); all are differentiable, for alpha-CROWN."""
    n = a.shape[0]
    c = m.weight.shape[1] * m.groups
    if a.dtype == torch.float32 and a.device.type == "cpu":
        if m.weight.shape[1] <= 4 and m.groups == 1 and tuple(m.dilation) == (1, 1):
            return _conv_input_vjp_by_phases(a, m, in_size, padding)
        extra = tuple(
            size + 2 * p - ((o - 1) * s + d * (k - 1) + 1)
            for size, p, o, s, d, k in zip(in_size, padding, a.shape[2:], m.stride, m.dilation, m.kernel_size)
        )
        if all(0 <= e < max(s, d) for e, s, d in zip(extra, m.stride, m.dilation)):
            return F.conv_transpose2d(a, m.weight, None, m.stride, padding, extra, m.groups, m.dilation)
    x = a.new_empty(n, c, *in_size)  # only its shape is read (an expanded view would be copied to contiguous)
    return torch.ops.aten.convolution_backward(
        a, x, m.weight, None, m.stride, padding, m.dilation, False, [0, 0], m.groups, (True, False, False)
    )[0]


def _conv_input_vjp_by_phases(a: torch.Tensor, m: nn.Conv2d, in_size: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """conv_input_vjp as one forward convolution: the transposed map's outputs of one stride phase
    (y = q * stride + r) read a fixed ceil(k / stride)-tap window of `a`, so the kernel split by
    phase (the phases as output channels) correlates with `a` padded by taps - 1, and the phases
    are interleaved back. On CPU in float32 this is about 3x faster than oneDNN's transposed
    convolution for convolutions with few input channels (measured: MNIST CNN, first layer)."""
    o, c, kh, kw = m.weight.shape
    sh, sw = m.stride
    th, tw = -(-kh // sh), -(-kw // sw)
    wp = F.pad(m.weight, (0, tw * sw - kw, 0, th * sh - kh))  # zero taps up to a multiple of the stride
    # tap j of phase r is kernel position (taps - 1 - j) * stride + r
    wc = wp.reshape(o, c, th, sh, tw, sw).flip(2, 4).permute(1, 3, 5, 0, 2, 4).reshape(c * sh * sw, o, th, tw)
    y = F.conv2d(a, wc, None, 1, (th - 1, tw - 1))  # (N, C*sh*sw, Qh, Qw)
    n, _, qh, qw = y.shape
    full = y.reshape(n, c, sh, sw, qh, qw).permute(0, 1, 4, 2, 5, 3).reshape(n, c, qh * sh, qw * sw)
    (ph, pw), (h, w) = padding, in_size
    full = F.pad(full, (0, max(0, pw + w - qw * sw), 0, max(0, ph + h - qh * sh)))  # stride leftovers read nothing
    return full[:, :, ph : ph + h, pw : pw + w]


def conv_transpose_unpadded(a: torch.Tensor, m: nn.Conv2d, size: tuple[int, int], cache: dict | None = None) -> torch.Tensor:
    """a (N, O, ph, pw) times the convolution's matrix transposed, as (N, C, *size): the input
    positions the outputs read, padding included (size = (ph - 1) * stride + dilation * (k - 1) + 1).

    Float32 on CPU with a small patch: one matmul with the patch's dense matrix (built once per
    patch size and kept in `cache`), several times faster there than a convolution backward that
    loops over the N patches; float64: the convolution backward (faster than the dense matrix)."""
    n, o, ph, pw = a.shape
    c = m.weight.shape[1] * m.groups
    dense_elems = o * ph * pw * c * size[0] * size[1]
    if cache is not None and a.dtype == torch.float32 and a.device.type == "cpu" and dense_elems <= 2**20:
        key = (id(m), ph, pw, a.dtype)
        if key not in cache:
            eye = torch.eye(o * ph * pw, dtype=a.dtype, device=a.device).reshape(-1, o, ph, pw)
            cache[key] = conv_input_vjp(eye, m, size, (0, 0)).reshape(o * ph * pw, -1)
        return (a.reshape(n, -1) @ cache[key]).reshape(n, c, *size)
    return conv_input_vjp(a, m, size, (0, 0))


def _kernel_is_patch(m: nn.Module) -> bool:
    """A one-hot row taken through this layer is its kernel: an undilated, ungrouped convolution."""
    return isinstance(m, nn.Conv2d) and m.groups == 1 and tuple(m.dilation) == (1, 1)


def patch_lower(
    blocks: list[list[nn.Module]],
    in_shapes: list[tuple[int, ...]],
    out_shapes: list[tuple[int, ...]],
    rows: torch.Tensor,
    relus: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    lo: torch.Tensor,
    hi: torch.Tensor,
    ball: tuple[torch.Tensor, torch.Tensor] | None = None,
    cache: dict | None = None,
) -> torch.Tensor:
    """Lower bounds (B, 2k) of z_i[rows] and of -z_i[rows] over the input box, for the output z_i
    of the last block of `blocks` (rows (B, k): flat neuron indices per point).

    `relus[j]` = (lower slope, upper slope, upper intercept) maps (B, *out_shapes[j]) of the ReLU
    after block j (CROWN's relaxation, already chosen by the caller). `ball` = (centre, radius):
    the input set also lies in this L2 ball; the larger of the box and ball bounds is returned.
    `cache`: a dict kept by the caller across calls with the same layers (transposed patch matrices).
    """
    i = len(blocks) - 1
    c_out, gh, gw = out_shapes[i]
    B, k = rows.shape
    dtype, device = lo.dtype, lo.device
    channel, spatial = rows // (gh * gw), rows % (gh * gw)
    # k rows e_i stand for the 2k rows e_i, -e_i until the first ReLU splits them (back_relu)
    p = PatchRows(torch.empty(0, dtype=dtype, device=device), Window((1, 1), (1, 1), (0, 0)), (spatial // gw, spatial % gw), (gh, gw))
    p.paired = True
    bias = torch.zeros(B, k, dtype=dtype, device=device)
    for j in range(i, -1, -1):
        if cache is None or ("shapes", j) not in cache:
            shapes = layer_shapes(blocks[j], in_shapes[j], dtype, device)
            if cache is not None:
                cache[("shapes", j)] = shapes
        shapes = cache[("shapes", j)] if cache is not None else shapes
        layers = list(zip(reversed(blocks[j]), reversed(shapes[:-1]), reversed(shapes[1:])))
        if j == i:
            first = next((n for n, (m, _, _) in enumerate(layers) if not isinstance(m, _PASS_THROUGH)), None)
            if first is not None and _kernel_is_patch(layers[first][0]):
                bias = bias + p.start_at_conv(layers[first][0], channel, layers[first][1])
                layers = layers[first + 1 :]
            else:  # one-hot rows at the block's output
                p.coef = torch.zeros(B, k, c_out, 1, 1, dtype=dtype, device=device)
                p.coef.view(B, k, c_out).scatter_(2, channel.unsqueeze(2), 1.0)
        for m, s_in, s_out in layers:
            if isinstance(m, nn.Conv2d):
                bias = bias + p.back_conv(m, s_in, cache)
            elif isinstance(m, nn.BatchNorm2d):
                scale, shift = bn_affine(m)
                bias = bias + p.back_elementwise(scale.view(-1, 1, 1), shift.view(-1, 1, 1), s_out)
            elif isinstance(m, ElementwiseAffine):
                bias = bias + p.back_elementwise(m.scale, m.shift, s_out)
        if j == 0:
            break
        was_paired = p.paired
        relu_bias = p.back_relu(*relus[j - 1])
        bias = (torch.cat([bias, -bias], 1) if was_paired else bias) + relu_bias
    # paired: no ReLU on the way, the bounds of z and of -z from the same rows
    return p.lower_over_input(lo, hi, ball) + (torch.cat([bias, -bias], 1) if p.paired else bias)
