"""Sound linear lines around elementwise activations: a_l x + b_l <= f(x) <= a_u x + b_u on [l, u].

CROWN (Zhang et al. 2018, sec. 3.2 and Table 1 for general activations) and DeepPoly (Singh et al.
2019, sec. 4) bound an activation y = f(x) with x in [l, u] by one lower and one upper line per
neuron. Here every activation is described by a few facts (`Activation`): the function f (torch,
evaluated in float64), its breakpoints (where f' jumps, or f'' does), a bound M on |f''| on every
smooth piece (0 for a piecewise linear f), whether f is nondecreasing, and its infimum and supremum
over the real line. From those facts alone `activation_lines` builds lines that are sound by
construction, so a new activation is a few lines of `activation_of`.

Slopes (what makes lines tight): candidates are the chord slope (f(u) - f(l)) / (u - l), the
tangent slopes f' at l, u and three interior points, and 0. The upper line keeps the candidate
whose line is lowest at the midpoint (the least area between line and f, DeepPoly's criterion), the
lower line the one highest there. On a convex piece this picks the chord above and the midpoint
tangent below (CROWN's lines), on a concave piece the reverse; across an inflection (sigmoid,
tanh, GELU straddling 0) a tangent or chord that is valid on the whole interval. The comparison
uses a coarse grid (cells / 4); only the two chosen slopes get the fine grid's intercepts.

Intercepts (what makes lines sound): for any slope a, b_u = max over [l, u] of g(x) = f(x) - a x
and b_l = its minimum. They are computed on a grid holding l, u, every breakpoint inside and
`cells` evenly spaced cells, with the margin of

  Lemma. If g' is M-Lipschitz on a cell [x_i, x_i + h], then |g(x) - c(x)| <= M h^2 / 8 on the
  cell, c the chord of g through the cell's endpoints. (e = g - c vanishes at both ends and
  |e''| <= M almost everywhere, so |e(x)| <= M (x - x_i)(x_i + h - x) / 2 <= M h^2 / 8.)

g'' = f'' away from breakpoints, so on cell i, g <= max(g(x_i), g(x_{i+1})) + M h_i^2 / 8; every
cell is at most h = (u - l) / cells wide (breakpoints only split cells), so b_u = max of g on the
grid + M h^2 / 8 and b_l = min - M h^2 / 8 are sound; a relative margin covers float64 rounding of
f and of a x. Any slope gives sound lines; a stable tiny interval (u - l ~ 0) gets a tangent with
a margin of order h^2.

Piecewise linear activations (LeakyReLU of any slope, Hardtanh / ReLU6 / clamp, Hardsigmoid)
have M = 0: the grid's extreme values are exact, so lines touch f (ReLU's triangle for one kink),
and on an interval inside one linear piece both lines are that piece (`exact` says so; branch and
bound reads it as affine there). Infinite bounds or widths past `WIDE` fall back to constant lines
0 x + [inf f, sup f] over the interval (interval bound propagation's answer), never NaN.

`activation_range` gives that interval [min f, max f] over [l, u] (exact for monotone f).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robustcli.certify.onnx_layers import Clip

WIDE = 1e4  # wider intervals get constant lines (a grid's margin would be larger than IBP's interval)
_ROUNDING = 64 * torch.finfo(torch.float64).eps  # relative margin for float64 evaluation of f and a x
_CHUNK = 2**15  # neurons per grid evaluation: (chunk, candidates, grid) floats stay ~100 MB


@dataclass(frozen=True)
class Activation:
    """The facts `activation_lines` needs about an elementwise f.

    f: f itself on float64 tensors (what the model computes). breakpoints: points where f' or f''
    jumps (also where `jump` happens). curvature: M >= sup |f''| off the breakpoints (0: piecewise
    linear). pieces: for a piecewise linear f, (slope, intercept) per piece between consecutive
    breakpoints (len(breakpoints) + 1 of them). monotone: f nondecreasing. lowest, highest:
    inf and sup of f over the reals (limits at -inf / +inf for monotone f) or bounds of them.
    jump: sup |f - its continuous version| (Softplus switches to x past its threshold: a jump
    of about 2e-9 that the margin covers)."""

    name: str
    f: Callable[[torch.Tensor], torch.Tensor]
    breakpoints: tuple[float, ...] = ()
    curvature: float = 0.0
    pieces: tuple[tuple[float, float], ...] | None = None
    monotone: bool = False
    lowest: float = -math.inf
    highest: float = math.inf
    jump: float = 0.0

    @property
    def piecewise_linear(self) -> bool:
        return self.pieces is not None


@dataclass
class Lines:
    """a_l x + b_l <= f(x) <= a_u x + b_u per neuron (all tensors of the bounds' shape); `exact`:
    both lines equal f on the interval (a piecewise linear f on one linear piece)."""

    low_slope: torch.Tensor
    low_icpt: torch.Tensor
    up_slope: torch.Tensor
    up_icpt: torch.Tensor
    exact: torch.Tensor


def activation_of(m: nn.Module) -> Activation | None:
    """The facts about an elementwise activation module, or None when `activation_lines` does not
    cover it. Curvature bounds are sup |f''| rounded up (sigmoid 1/(6 sqrt 3), tanh 4/(3 sqrt 3),
    SiLU 1/2, GELU 2 phi(0) = 0.7979, Mish 0.6443 found on a 1e-5 grid over [-30, 30] and checked
    in tests by finite differences)."""
    if isinstance(m, nn.Sigmoid):
        return Activation("Sigmoid", torch.sigmoid, (), 0.0963, monotone=True, lowest=0.0, highest=1.0)
    if isinstance(m, nn.Tanh):
        return Activation("Tanh", torch.tanh, (), 0.7699, monotone=True, lowest=-1.0, highest=1.0)
    if isinstance(m, nn.Tanhshrink):
        return Activation("Tanhshrink", F.tanhshrink, (), 0.7699, monotone=True)
    if isinstance(m, nn.Softsign):
        return Activation("Softsign", F.softsign, (0.0,), 2.0, monotone=True, lowest=-1.0, highest=1.0)
    if isinstance(m, nn.LogSigmoid):
        return Activation("LogSigmoid", F.logsigmoid, (), 0.25, monotone=True, highest=0.0)
    if isinstance(m, nn.Softplus):
        beta, threshold = float(m.beta), float(m.threshold)
        if beta <= 0:
            return None
        return Activation("Softplus", lambda x: F.softplus(x, beta, threshold), (threshold / beta,), beta / 4,
                          monotone=True, lowest=0.0, jump=math.log1p(math.exp(-threshold)) / beta * 1.01)
    if isinstance(m, nn.SiLU):
        return Activation("SiLU", F.silu, (), 0.5001, lowest=-0.27847)
    if isinstance(m, nn.GELU):
        approximate = m.approximate
        return Activation("GELU", lambda x: F.gelu(x, approximate=approximate), (), 0.798,
                          lowest=-0.1701 if approximate == "tanh" else -0.17)
    if isinstance(m, nn.Mish):
        return Activation("Mish", F.mish, (), 0.645, lowest=-0.30885)
    if isinstance(m, nn.Hardswish):
        return Activation("Hardswish", F.hardswish, (-3.0, 3.0), 1 / 3 + 1e-12, lowest=-0.375)
    if isinstance(m, nn.ELU) or isinstance(m, nn.SELU):
        alpha, scale = (1.6732632423543772, 1.0507009873554805) if isinstance(m, nn.SELU) else (float(m.alpha), 1.0)
        f = F.selu if isinstance(m, nn.SELU) else (lambda x: F.elu(x, alpha))
        limit = -alpha * scale  # f(-inf)
        return Activation(type(m).__name__, f, (0.0,), abs(alpha) * scale * (1 + 1e-12), monotone=alpha >= 0,
                          lowest=min(limit, 0.0), highest=math.inf)
    if isinstance(m, nn.CELU):
        alpha = float(m.alpha)
        if alpha <= 0:
            return None
        return Activation("CELU", lambda x: F.celu(x, alpha), (0.0,), 1 / alpha * (1 + 1e-12), monotone=True,
                          lowest=-alpha)
    if isinstance(m, nn.LeakyReLU):
        s = float(m.negative_slope)
        return Activation("LeakyReLU", lambda x: F.leaky_relu(x, s), (0.0,), pieces=((s, 0.0), (1.0, 0.0)),
                          monotone=s >= 0, lowest=-math.inf if s > 0 else 0.0)
    if isinstance(m, nn.Hardtanh):  # ReLU6 too
        lo, hi = float(m.min_val), float(m.max_val)
        return _clamp("Hardtanh", lo, hi)
    if isinstance(m, Clip):
        lo = -math.inf if m.low is None else float(m.low)
        hi = math.inf if m.high is None else float(m.high)
        return _clamp("Clip", lo, hi)
    if isinstance(m, nn.Hardsigmoid):
        return Activation("Hardsigmoid", F.hardsigmoid, (-3.0, 3.0), pieces=((0.0, 0.0), (1 / 6, 0.5), (0.0, 1.0)),
                          monotone=True, lowest=0.0, highest=1.0)
    return None


def _clamp(name: str, lo: float, hi: float) -> Activation | None:
    """clamp(x, lo, hi) (either side may be open); None for lo > hi (torch then returns hi: constant)."""
    if lo > hi:
        return None
    points, pieces = [], []
    if lo > -math.inf:
        points.append(lo)
        pieces.append((0.0, lo))
    pieces.append((1.0, 0.0))
    if hi < math.inf:
        points.append(hi)
        pieces.append((0.0, hi))
    return Activation(name, lambda x: x.clamp(None if lo == -math.inf else lo, None if hi == math.inf else hi),
                      tuple(points), pieces=tuple(pieces), monotone=True, lowest=lo, highest=hi)


def exact_on(act: Activation, l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Where `activation_lines` gives exact lines (`Lines.exact`), without computing them: [l, u]
    inside one linear piece of a piecewise linear f (never for a smooth f)."""
    if not act.piecewise_linear:
        return torch.zeros_like(l, dtype=torch.bool)
    b = torch.tensor((*act.breakpoints, math.inf), dtype=l.dtype, device=l.device)
    piece = torch.bucketize(l, b[:-1], right=True)
    return (u <= b[piece]) & torch.isfinite(l) & torch.isfinite(u) & (u - l <= WIDE)


def covered(m: nn.Module) -> bool:
    """Whether `activation_lines` bounds this module (native CROWN then bounds it)."""
    return activation_of(m) is not None


# -- the lines --------------------------------------------------------------------------------------
def _limits(act: Activation, x: torch.Tensor) -> torch.Tensor:
    """f(x), with the declared limits at +-inf (x * Phi(x) at -inf would be NaN)."""
    safe = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    y = act.f(safe)
    y = torch.where(x == math.inf, torch.full_like(y, act.highest if act.monotone else math.inf), y)
    return torch.where(x == -math.inf, torch.full_like(y, act.lowest if act.monotone else math.inf), y)


def activation_range(act: Activation, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound [min f, max f] over [l, u] (any shape): [f(l), f(u)] for monotone f, else the grid's
    extremes widened by the lemma's margin (f >= min(f(x_i), f(x_{i+1})) - M h^2 / 8 on a cell),
    intersected with [lowest, highest]; an infinite endpoint gives [lowest, highest]."""
    with torch.no_grad():
        l, u = l.detach(), u.detach()
        if act.monotone:
            lo = _limits(act, l) - act.jump
            hi = _limits(act, u) + act.jump
            return lo.clamp(min=act.lowest), hi.clamp(max=act.highest)
        shape = l.shape
        lf, uf = l.reshape(-1), u.reshape(-1)
        lo_out = torch.full_like(lf, act.lowest)
        hi_out = torch.full_like(lf, act.highest)
        finite = torch.isfinite(lf) & torch.isfinite(uf)
        for s in range(0, lf.numel(), _CHUNK):
            ls, us, fin = lf[s:s + _CHUNK], uf[s:s + _CHUNK], finite[s:s + _CHUNK]
            x = _grid(act, torch.where(fin, ls, 0.0), torch.where(fin, us, 0.0), 32)
            y = act.f(x)
            h2 = (x[:, 1:] - x[:, :-1]) ** 2 * (act.curvature / 8)
            round_ = _ROUNDING * (1 + y.abs().amax(1))
            low = (torch.minimum(y[:, 1:], y[:, :-1]) - h2).amin(1) - round_ - act.jump
            high = (torch.maximum(y[:, 1:], y[:, :-1]) + h2).amax(1) + round_ + act.jump
            lo_out[s:s + _CHUNK] = torch.where(fin, torch.maximum(low, lo_out[s:s + _CHUNK]), lo_out[s:s + _CHUNK])
            hi_out[s:s + _CHUNK] = torch.where(fin, torch.minimum(high, hi_out[s:s + _CHUNK]), hi_out[s:s + _CHUNK])
        return lo_out.reshape(shape), hi_out.reshape(shape)


def _grid(act: Activation, l: torch.Tensor, u: torch.Tensor, cells: int) -> torch.Tensor:
    """(n, cells + 1 + #breakpoints) sorted points of [l_k, u_k]: even spacing plus the breakpoints
    (clamped into the interval: outside ones become duplicates of an endpoint, zero-width cells)."""
    t = torch.linspace(0, 1, cells + 1, dtype=l.dtype, device=l.device)
    x = l.unsqueeze(1) + (u - l).unsqueeze(1) * t
    x[:, -1] = u  # exactly u, whatever the rounding of l + (u - l)
    if act.breakpoints:
        b = torch.tensor(act.breakpoints, dtype=l.dtype, device=l.device)
        x = torch.cat([x, torch.minimum(torch.maximum(b, l.unsqueeze(1)), u.unsqueeze(1))], 1).sort(1).values
    return x


def _derivative(act: Activation, x: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        v = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(act.f(v).sum(), v)
    return torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


def activation_lines(act: Activation, l: torch.Tensor, u: torch.Tensor, cells: int = 64) -> Lines:
    """Sound lines for f over [l, u] per neuron (l, u any equal shapes, l <= u); see the module
    docstring for the choice of slopes and the margins that make the intercepts sound."""
    with torch.no_grad():
        l, u = l.detach(), u.detach()
        shape = l.shape
        lf, uf = l.reshape(-1).to(torch.float64), u.reshape(-1).to(torch.float64)
        out = [torch.zeros_like(lf) for _ in range(4)]
        exact = torch.zeros_like(lf, dtype=torch.bool)
        for s in range(0, lf.numel(), _CHUNK):
            part = _lines_flat(act, lf[s:s + _CHUNK], uf[s:s + _CHUNK], cells)
            for o, p in zip(out, part[:4]):
                o[s:s + _CHUNK] = p
            exact[s:s + _CHUNK] = part[4]
        dt = l.dtype
        return Lines(*(o.reshape(shape).to(dt) for o in out), exact.reshape(shape))


def _extremes(act: Activation, g: torch.Tensor, y: torch.Tensor, slopes: torch.Tensor, reach: torch.Tensor,
              w: torch.Tensor, cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound max and min (n, S) of f - a x over [l, u] from its values g (n, S, G) on a grid of
    `cells` even cells (plus breakpoints): the grid's extremes widened by M h^2 / 8 (the lemma),
    the jump and float64 rounding."""
    h2 = ((w / cells) ** 2 * (act.curvature / 8)).unsqueeze(1)  # (n, 1)
    scale = y.abs().amax(1, keepdim=True) + slopes.abs() * reach.unsqueeze(1)
    margin = _ROUNDING * (1 + scale) + act.jump + h2
    return g.amax(2) + margin, g.amin(2) - margin


def _lines_flat(act: Activation, l: torch.Tensor, u: torch.Tensor, cells: int):
    n = l.numel()
    zero = torch.zeros_like(l)
    ok = torch.isfinite(l) & torch.isfinite(u) & (u - l <= WIDE)
    ls, us = torch.where(ok, l, zero), torch.where(ok, u, zero)
    # IBP's constant lines: the fallback, and a candidate everywhere (0 x + [min f, max f])
    rlo, rhi = activation_range(act, l, u)
    if act.piecewise_linear:
        # inside one linear piece both lines are that piece, exactly
        b = torch.tensor((*act.breakpoints, math.inf), dtype=l.dtype, device=l.device)
        piece = torch.bucketize(ls, b[:-1], right=True)  # the piece holding l (a breakpoint: the one right of it)
        inside = exact_on(act, l, u)
        piece_slope = torch.tensor([p[0] for p in act.pieces], dtype=l.dtype, device=l.device)[piece]
        piece_icpt = torch.tensor([p[1] for p in act.pieces], dtype=l.dtype, device=l.device)[piece]
    w = us - ls
    mid = (ls + us) / 2
    reach = torch.maximum(ls.abs(), us.abs())
    # Slopes are chosen on a coarse grid (cells / 4 cells, the grid's own extremes: the margins are
    # alike for every candidate), then the two chosen slopes' intercepts are computed on the fine
    # grid with the lemma's margin. (Choosing on the fine grid cost 3x as much.)
    xc = _grid(act, ls, us, max(1, cells // 4))  # (n, Gc)
    yc = act.f(xc)
    points = torch.stack([ls, us, mid, ls + w / 4, ls + 3 * w / 4], 1)
    tangents = _derivative(act, points)
    fl, fu = yc[:, 0], yc[:, -1]
    chord = torch.where(w > 0, (fu - fl) / torch.where(w > 0, w, torch.ones_like(w)), tangents[:, 2])
    slopes = torch.cat([chord.unsqueeze(1), tangents, torch.zeros_like(chord).unsqueeze(1)], 1)  # (n, S)
    g = yc.unsqueeze(1) - slopes.unsqueeze(2) * xc.unsqueeze(1)  # f - a x on the coarse grid, (n, S, Gc)
    ku = (g.amax(2) + slopes * mid.unsqueeze(1)).argmin(1, keepdim=True)
    kl = (g.amin(2) + slopes * mid.unsqueeze(1)).argmax(1, keepdim=True)
    a_u, a_l = slopes.gather(1, ku).squeeze(1), slopes.gather(1, kl).squeeze(1)
    x = _grid(act, ls, us, cells)  # (n, G)
    y = act.f(x)
    chosen = torch.stack([a_l, a_u], 1)  # (n, 2)
    up, low = _extremes(act, y.unsqueeze(1) - chosen.unsqueeze(2) * x.unsqueeze(1), y, chosen, reach, w, cells)
    b_l, b_u = low[:, 0], up[:, 1]
    # a constant line takes the range's exact values where they are tighter
    b_u = torch.where(a_u == 0, torch.minimum(b_u, rhi), b_u)
    b_l = torch.where(a_l == 0, torch.maximum(b_l, rlo), b_l)
    exact = torch.zeros(n, dtype=torch.bool, device=l.device)
    if act.piecewise_linear:
        a_l, a_u = torch.where(inside, piece_slope, a_l), torch.where(inside, piece_slope, a_u)
        b_l, b_u = torch.where(inside, piece_icpt, b_l), torch.where(inside, piece_icpt, b_u)
        exact = inside
    # outside the grid's reach: IBP's constant lines
    a_l, a_u = torch.where(ok, a_l, zero), torch.where(ok, a_u, zero)
    b_l, b_u = torch.where(ok, b_l, rlo), torch.where(ok, b_u, rhi)
    return a_l, b_l, a_u, b_u, exact


# -- optimised slopes (alpha-CROWN) -----------------------------------------------------------------
@dataclass
class SlopeGrid:
    """What optimised slopes need per neuron, from the bounds alone (computed once per bounds):
    the grid points x and f(x) (B, n, G), the slope span [lo, hi] (B, n) that the parameters
    t in [0, 1] map onto (a = lo + t (hi - lo): the smallest and largest of f' on the grid and the
    chord), the margin terms, and `fixed` (B, n): neurons whose lines stay CROWN's (exact lines,
    or bounds outside the grid's reach)."""

    x: torch.Tensor
    y: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    curvature_margin: torch.Tensor  # M h^2 / 8 + jump, (B, n)
    reach: torch.Tensor  # max |x| on the interval, (B, n), for the rounding margin of a x
    y_scale: torch.Tensor  # max |f| on the grid, (B, n)
    fixed: torch.Tensor


def slope_grid(act: Activation, l: torch.Tensor, u: torch.Tensor, cells: int = 32) -> SlopeGrid:
    """The `SlopeGrid` of f over [l, u] (B, n). The grid, f on it and the margin are differentiable
    in l and u (alpha-CROWN's gradient reaches the intermediate bounds through them); the span and
    `fixed` are not (any span gives sound lines)."""
    B, n = l.shape
    with torch.no_grad():
        ok = torch.isfinite(l) & torch.isfinite(u) & (u - l <= WIDE)
        fixed = ~ok | exact_on(act, l, u)
    zero = torch.zeros((), dtype=l.dtype, device=l.device)
    ls, us = torch.where(ok, l, zero), torch.where(ok, u, zero)
    x = _grid(act, ls.reshape(-1), us.reshape(-1), cells)
    y = act.f(x)
    w = (us - ls).reshape(-1)
    with torch.no_grad():
        d = _derivative(act, x.detach())
        wd, yd = w.detach(), y.detach()
        chord = torch.where(wd > 0, (yd[:, -1] - yd[:, 0]) / torch.where(wd > 0, wd, torch.ones_like(wd)), d[:, 0])
        # 0 too: CROWN's lines may be constant (a candidate of `activation_lines`)
        lo = torch.minimum(torch.minimum(d.amin(1), chord), torch.zeros_like(chord))
        hi = torch.maximum(torch.maximum(d.amax(1), chord), torch.zeros_like(chord))
        reach, y_scale = torch.maximum(ls.abs(), us.abs()), yd.abs().amax(1).reshape(B, n)
    G = x.shape[1]
    return SlopeGrid(x.reshape(B, n, G), y.reshape(B, n, G), lo.reshape(B, n), hi.reshape(B, n),
                     ((w / cells) ** 2 * (act.curvature / 8)).reshape(B, n) + act.jump, reach, y_scale, fixed)


def slopes_to_params(grid: SlopeGrid, slopes: torch.Tensor) -> torch.Tensor:
    """Parameters t in [0, 1] (any leading shape ending in n) whose slopes are `slopes` (clamped)."""
    span = grid.hi - grid.lo
    t = (slopes - grid.lo.unsqueeze(1)) / torch.where(span > 0, span, torch.ones_like(span)).unsqueeze(1)
    return t.clamp(0, 1)


def intercepts(grid: SlopeGrid, t: torch.Tensor, upper: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Slopes a = lo + t (hi - lo) and their sound intercepts, each (B, R, n) for t (B, R, n):
    b = max (upper) or min of f(x) - a x on the grid, widened by the lemma's margin and rounding
    (see the module docstring); differentiable in t (a subgradient through the max)."""
    a = grid.lo.unsqueeze(1) + t * (grid.hi - grid.lo).unsqueeze(1)
    g = grid.y.unsqueeze(1) - a.unsqueeze(-1) * grid.x.unsqueeze(1)  # (B, R, n, G)
    margin = grid.curvature_margin.unsqueeze(1) + _ROUNDING * (
        1 + grid.y_scale.unsqueeze(1) + a.detach().abs() * grid.reach.unsqueeze(1))
    return a, (g.amax(-1) + margin if upper else g.amin(-1) - margin)
