"""Lower bounds of C f(x) + d for networks with residual adds and concatenations: CROWN and
alpha-CROWN on a computation graph.

The canonical layer tree (nn.Sequential, `Residual(body, shortcut)`, `Concat(branches, dim)`,
`Normalized`, and the affine leaves of certify/chain_bounds.py with ReLUs) becomes a DAG of nodes:
the input, an affine run (consecutive affine layers of one branch), an add, a concatenation along a
per-point feature axis, a ReLU, an elementwise activation ("act": sigmoid, tanh, GELU, SiLU, leaky
ReLU, ... relaxed by the per-neuron lines of certify/activation_lines.py: positive coefficients take
the lower line, negative ones the upper, the intercepts add to the constant; `_act_back`), and a
max pooling (nn.MaxPool2d: padding, dilation and ceil_mode
read as windows of input positions, see `_window_index`; nn.AdaptiveMaxPool2d likewise). Nodes are numbered in a topological order (every node after
its parents).

- CROWN (Zhang et al. 2018, Thm 3.2) in the general-graph form of Xu et al. 2020 ("Automatic
  perturbation analysis", sec. 3.2, auto_LiRPA's backward mode): the rows A of a bounded quantity
  are propagated from its node towards the input in reverse topological order. A node is reached
  only after all its consumers, so the coefficients arriving from several consumers are summed
  first (a fork feeding a residual add and its shortcut); an add passes its coefficients to every
  parent, a concatenation passes each parent its slice, an affine run passes A W (and adds A b
  to the constant), a ReLU relaxes A with the lines of chain_bounds (upper line u (z - l)/(u - l),
  adaptive lower slope 1 if u > -l else 0 on unstable neurons). The input's coefficients are
  concretised over the box, and for an L2 ball also by the dual norm (A x0 - eps ||A||_2), the
  larger bound kept, as in chain_bounds. A max pooling relaxes each output window with the lines
  of DeepPoly (Singh et al. 2019, sec. 4, max pooling; `_maxpool_lines`): the window's value
  y = max_j x_j is exactly x_{j*} when one input's lower bound is at least every other input's
  upper bound; otherwise y >= x_{j*} (j* the input of largest lower bound) and y <= max_j u_j.
- Intermediate bounds: every node that feeds a ReLU, an activation or a max pooling is bounded, in topological order, by IBP from
  the (already tightened) bounds of the ReLUs before it (Gowal et al. 2018, eq. 6), then by CROWN
  for the neurons IBP leaves unstable only (a stable neuron's relaxation is exact whatever its
  bounds; for a max pooling's input: the inputs of windows not decided by their bounds), each
  neuron's interval the intersection of both. On a chain this is the same
  computation as chain_bounds', which chains keep using. Rows of a convolutional node whose graph
  down to the input is convolutional are kept as patches (certify/dag_patches.py); other one-hot
  rows through an affine node are rows of its dense matrix.
- alpha-CROWN (Xu et al. 2021, sec. 3.1): the lower slopes of every (ReLU, bounded quantity) pair
  become variables in [0, 1] (one per row and neuron; in patch form for convolutional quantities),
  optimised by projected Adam (lr 0.1) on the specification's bound, started at CROWN's adaptive
  slopes; every iterate is sound, so the best bound per row over the iterations is kept, and later
  iterations start from the tightest intermediate bounds seen. For the specification, a max
  pooling's lower line where the window is not exact becomes a convex combination of the window's
  inputs with optimised weights (y >= every x_j, so y >= sum_j lambda_j x_j; auto_LiRPA 0.3
  optimises the same line); the intermediate quantities keep x_{j*}. An activation's two slopes
  are variables too (`_act_params`: per specification row and neuron; per intermediate quantity
  one pair for its lower-bound rows and one for its upper-bound rows), each a point of the span of
  f' on the neuron's interval, with intercepts recomputed soundly for every slope
  (activation_lines.intercepts), so every iterate stays sound.

Computed in float64 by default; the engine runs on the device of the model's parameters.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from robustcli.certify import chain_bounds as cb
from robustcli.certify import dag_patches
from robustcli.certify.activation_lines import (
    Activation, Lines, activation_lines, activation_of, activation_range, exact_on, intercepts, slope_grid,
    slopes_to_params,
)
from robustcli.certify.chain_bounds import (
    AFFINE, NotAChain, _ibp_exact, _relax_rows, _relu_lines, back_affine, ibp_affine,
    projected_adam_step_,
)
from robustcli.certify.conv_patches import layer_shapes
from robustcli.certify.deadline import DeadlineReached, check_deadline
from robustcli.certify.onnx_layers import ElementwiseAffine


class NotADag(NotAChain):
    """The model has a layer the graph engine does not bound (smooth activations, clamps, BatchNorm
    with batch statistics)."""


@dataclass
class Node:
    """One value of the graph. kind: "input", "affine" (`layers` applied to the one parent), "add",
    "concat" (parents joined along per-point axis `axis`), "relu", "act" (an elementwise activation
    other than ReLU, `layers` = [its module], relaxed by certify/activation_lines.py), "maxpool" (`layers` = [the
    nn.MaxPool2d or nn.AdaptiveMaxPool2d]; `window` (n_out, k): flat parent index of every output's window slots, padding
    slots = the parent's numel)."""

    kind: str
    parents: tuple[int, ...]
    shape: tuple[int, ...] = ()
    layers: list[nn.Module] = field(default_factory=list)
    axis: int = 0
    shapes: list[tuple[int, ...]] = field(default_factory=list)  # affine: per-layer shapes (layer_shapes)
    window: torch.Tensor | None = None

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class Dag:
    """The graph, its output node, and the nodes whose bounds the ReLUs need (`pre`, topological)."""

    nodes: list[Node]
    output: int
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, model: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> "Dag":
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        builder = _Builder(dtype)
        out, run = builder.walk(model, 0, [])
        out = builder.flush(out, run)
        dag = cls(builder.nodes, out, dtype, device)
        dag._shapes(tuple(input_shape))
        return dag

    def _shapes(self, input_shape: tuple[int, ...]) -> None:
        vals: list[torch.Tensor] = []
        with torch.no_grad():
            for n in self.nodes:
                if n.kind == "input":
                    v = torch.zeros(1, *input_shape, dtype=self.dtype, device=self.device)
                elif n.kind == "affine":
                    p = vals[n.parents[0]]
                    n.shapes = layer_shapes(n.layers, tuple(p.shape[1:]), self.dtype, self.device)
                    v = p
                    for m in n.layers:
                        v = m(v)
                elif n.kind == "add":
                    shapes = {tuple(vals[q].shape) for q in n.parents}
                    if len(shapes) != 1:
                        raise NotADag(f"a residual add joins values of different shapes {sorted(shapes)}")
                    v = sum(vals[q] for q in n.parents)
                elif n.kind == "concat":
                    v = torch.cat([vals[q] for q in n.parents], n.axis + 1)
                elif n.kind == "maxpool":
                    p = vals[n.parents[0]]
                    if p.dim() != 4:
                        raise NotADag(f"{type(n.layers[0]).__name__} on a value of shape {tuple(p.shape[1:])}: the graph engine pools (C, H, W) maps")
                    v = n.layers[0](p)
                    index = _adaptive_window_index if isinstance(n.layers[0], nn.AdaptiveMaxPool2d) else _window_index
                    n.window = index(n.layers[0], tuple(p.shape[1:]), tuple(v.shape[2:]), self.device)
                elif n.kind == "act":
                    if activation_of(n.layers[0]) is None:
                        raise NotADag(f"layer {type(n.layers[0]).__name__} has no linear relaxation here")
                    v = n.layers[0](vals[n.parents[0]])
                else:
                    v = F.relu(vals[n.parents[0]])
                n.shape = tuple(v.shape[1:])
                vals.append(v)

    @property
    def pre(self) -> list[int]:
        """Nodes that feed a ReLU, an activation or a max pooling (their relaxations need bounds), in
        topological order."""
        return sorted({n.parents[0] for n in self.nodes if n.kind in ("relu", "act", "maxpool")})

    @property
    def relu_inputs(self) -> list[int]:
        """Nodes that feed a ReLU, in topological order."""
        return sorted({n.parents[0] for n in self.nodes if n.kind == "relu"})

    @property
    def relus(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n.kind == "relu"]

    def ancestors(self, target: int) -> set[int]:
        cache = self.__dict__.setdefault("_ancestors", {})
        if target not in cache:
            seen, todo = set(), [target]
            while todo:
                i = todo.pop()
                if i not in seen:
                    seen.add(i)
                    todo += list(self.nodes[i].parents)
            cache[target] = seen
        return cache[target]

    def width(self) -> int:
        return max(n.numel for n in self.nodes)

    def dense(self, i: int, max_elements: int = 2**22) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Affine node i as a dense matrix and bias (n_out, n_in), (n_out,), computed once; None if
        too large or not an affine node."""
        cache = self.__dict__.setdefault("_dense", {})
        if i not in cache:
            n = self.nodes[i]
            parent = self.nodes[n.parents[0]] if n.parents else None
            if n.kind != "affine" or n.numel * parent.numel > max_elements:
                cache[i] = None
            else:
                eye = torch.eye(n.numel, dtype=self.dtype, device=self.device).reshape(n.numel, *n.shape)
                w, b = back_affine(n.layers, parent.shape, eye, n.shapes)
                cache[i] = (w.reshape(n.numel, parent.numel), b)
        return cache[i]


class _Builder:
    """Turns the layer tree into nodes. `walk(module, src, run)`: the value so far is the affine
    `run` applied to node `src`; returns the same pair after the module."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        self.nodes: list[Node] = [Node("input", ())]

    def add(self, node: Node) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1

    def flush(self, src: int, run: list[nn.Module]) -> int:
        return self.add(Node("affine", (src,), layers=run)) if run else src

    def walk(self, m: nn.Module, src: int, run: list[nn.Module]) -> tuple[int, list[nn.Module]]:
        from robustcli.core.nn import Concat, Normalized, Residual

        if isinstance(m, Normalized):
            norm = ElementwiseAffine(1.0 / m.std[0], -m.mean[0] / m.std[0])
            return self.walk(m.model, src, run + [_as_dtype(norm, self.dtype)])
        if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward:
            for child in m:
                src, run = self.walk(child, src, run)
            return src, run
        if isinstance(m, nn.ReLU):
            return self.add(Node("relu", (self.flush(src, run),))), []
        if isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
            if m.return_indices:
                raise NotADag(f"{type(m).__name__} with return_indices=True")
            return self.add(Node("maxpool", (self.flush(src, run),), layers=[_as_dtype(m, self.dtype)])), []
        if activation_of(m) is not None:  # sigmoid, tanh, GELU, leaky ReLU, ...: linear lines per neuron
            return self.add(Node("act", (self.flush(src, run),), layers=[_as_dtype(m, self.dtype)])), []
        if isinstance(m, Residual):
            fork = self.flush(src, run)
            outs = [self.flush(*self.walk(b, fork, [])) for b in (m.body, m.shortcut)]
            return self.add(Node("add", tuple(outs))), []
        if isinstance(m, Concat):
            fork = self.flush(src, run)
            outs = [self.flush(*self.walk(b, fork, [])) for b in m.branches]
            return self.add(Node("concat", tuple(outs), axis=m.dim - 1)), []
        if isinstance(m, AFFINE):
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and (m.training or m.running_mean is None):
                raise NotADag("BatchNorm must be in eval mode with running statistics")
            if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
                raise NotADag(f"Conv2d with padding_mode={m.padding_mode!r}")
            return src, run + [_as_dtype(m, self.dtype)]
        raise NotADag(f"layer {type(m).__name__} is not supported by the graph CROWN engine")


def _as_dtype(m: nn.Module, dtype: torch.dtype) -> nn.Module:
    m = copy.deepcopy(m)
    m.eval()
    m.requires_grad_(False)  # bounds are functions of the input box only
    return m.to(dtype)


# -- max pooling ------------------------------------------------------------------------------------
def _window_index(m: nn.MaxPool2d, in_shape: tuple[int, ...], out_hw: tuple[int, ...],
                  device: torch.device) -> torch.Tensor:
    """(n_out, k): for output (c, i, j) in flat order, the flat input index of each of its window's
    k = kh * kw slots; a slot on padding, or past the edge (ceil_mode's last window), gets n_in,
    which stands for -inf (torch's max pooling pads with -inf, so such a slot never is the max).

    Built by unfolding a map of input indices padded with n_in: the same windows as
    F.max_pool2d for any padding, stride, dilation and ceil_mode (tested against it)."""
    C, H, W = in_shape
    n_in = C * H * W
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    (kh, kw), (sh, sw) = pair(m.kernel_size), pair(m.stride if m.stride is not None else m.kernel_size)
    (ph, pw), (dh, dw) = pair(m.padding), pair(m.dilation)
    Ho, Wo = out_hw
    # ceil_mode may ask for a last window reaching past the right padding: pad far enough for it.
    extra_h = max(0, (Ho - 1) * sh + dh * (kh - 1) + 1 - (H + 2 * ph))
    extra_w = max(0, (Wo - 1) * sw + dw * (kw - 1) + 1 - (W + 2 * pw))
    idx = torch.arange(n_in, dtype=torch.float64).reshape(1, C, H, W)
    idx = F.pad(idx, (pw, pw + extra_w, ph, ph + extra_h), value=float(n_in))
    Hp, Wp = idx.shape[2:]
    cols = F.unfold(idx, (kh, kw), dilation=(dh, dw), stride=(sh, sw))  # (1, C*kh*kw, Hu*Wu)
    Hu, Wu = (Hp - dh * (kh - 1) - 1) // sh + 1, (Wp - dw * (kw - 1) - 1) // sw + 1
    cols = cols.reshape(C, kh * kw, Hu, Wu)[:, :, :Ho, :Wo]
    return cols.permute(0, 2, 3, 1).reshape(C * Ho * Wo, kh * kw).round().long().to(device)


def _adaptive_window_index(m: nn.AdaptiveMaxPool2d, in_shape: tuple[int, ...], out_hw: tuple[int, ...],
                           device: torch.device) -> torch.Tensor:
    """(n_out, k) windows of adaptive max pooling, as `_window_index`: output row i covers input rows
    floor(i H / Ho) .. ceil((i + 1) H / Ho) - 1 (torch's rule; likewise columns). Windows may differ
    in size; k is the largest, smaller ones padded with n_in (-inf)."""
    C, H, W = in_shape
    n_in = C * H * W
    Ho, Wo = out_hw

    def spans(n: int, m: int) -> list[range]:
        return [range((i * n) // m, -(-((i + 1) * n) // m)) for i in range(m)]

    rows, cols = spans(H, Ho), spans(W, Wo)
    k = max(len(r) for r in rows) * max(len(c) for c in cols)
    table = torch.full((C, Ho, Wo, k), n_in, dtype=torch.long)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            flat = torch.tensor([a * W + b for a in r for b in c], dtype=torch.long)
            table[:, i, j, : len(flat)] = flat + torch.arange(C).unsqueeze(1) * H * W
    return table.reshape(C * Ho * Wo, k).to(device)


def _maxpool_lines(window: torch.Tensor, l: torch.Tensor, u: torch.Tensor):
    """DeepPoly's max pooling relaxation (Singh et al. 2019, sec. 4) of y_o = max_{j in window o} x_j
    over the box l <= x <= u (l, u (B, n_in)). Returns (jstar, exact, upper), each (B, n_out):

    - jstar: the window input of largest lower bound (ties: of largest upper bound). y_o >= x_jstar
      holds for every x (y is a max over a set holding x_jstar), so the lower line is sound for any
      choice; the largest lower bound makes it tightest at the box's lower corner.
    - exact: l_jstar >= u_j for every other input j of the window: then every x_j <= u_j <= l_jstar
      <= x_jstar, so y_o = x_jstar on the whole box (the upper line is x_jstar too).
    - upper: max_j u_j, the constant upper line y_o <= max_j u_j (each x_j <= u_j), used where not
      exact. Padding slots are -inf and take part in neither."""
    B = l.shape[0]
    ninf = torch.full((B, 1), float("-inf"), dtype=l.dtype, device=l.device)
    lw = torch.cat([l, ninf], 1)[:, window]  # (B, n_out, k)
    uw = torch.cat([u, ninf], 1)[:, window]
    lmax = lw.amax(2, keepdim=True)
    # Ties in the lower bound are common (ReLU outputs with lower bound 0): among them the input of
    # largest upper bound, whose line x_jstar then follows y over more of the box.
    slot = torch.where(lw == lmax, uw, torch.full_like(uw, float("-inf"))).argmax(2)
    lmax = lmax.squeeze(2)
    jstar = window.expand(B, *window.shape).gather(2, slot.unsqueeze(2)).squeeze(2)
    others = uw.scatter(2, slot.unsqueeze(2), float("-inf")).amax(2)
    return jstar, lmax >= others, uw.amax(2)


def _maxpool_back(n: Node, parent_numel: int, a: torch.Tensor, bounds_parent, bias: torch.Tensor,
                  weights: torch.Tensor | None = None):
    """Rows a (B, R, n_out) of a max pooling's output taken to its input through `_maxpool_lines`:
    a positive coefficient takes the lower line x_jstar, a negative one the upper line (x_jstar
    where exact, else the constant max_j u_j, added to the bias). Returns (bias, rows (B, R, n_in)).

    `weights` (B, R, n_out, k) in [0, 1] (alpha-CROWN's): where a window is not exact, the lower
    line becomes the convex combination sum_j lambda_j x_j, lambda = the weights of the window's
    real slots normalised to sum 1 (y >= every x_j, so y >= any convex combination of them; auto_LiRPA
    optimises the same line); all-zero weights fall back to x_jstar."""
    B, R = a.shape[:2]
    l, u = (t.reshape(t.shape[0], -1) for t in bounds_parent)
    jstar, exact, upper = _maxpool_lines(n.window, l, u)
    jstar, exact, upper = (t.expand(B, *t.shape[1:]) for t in (jstar, exact, upper))
    neg = a.clamp(max=0)
    loose = ~exact.unsqueeze(1)
    bias = bias + (torch.where(loose, neg, torch.zeros_like(neg)) * torch.where(exact, 0.0, upper).unsqueeze(1)).sum(2)
    rows = torch.zeros(B, R, parent_numel + 1, dtype=a.dtype, device=a.device)  # + the padding slot, dropped
    if weights is None:
        through = torch.where(loose, a - neg, a)
        return bias, rows.scatter_add(2, jstar.unsqueeze(1).expand(B, R, -1), through)[:, :, :parent_numel]
    window = n.window  # (n_out, k)
    onehot = (window.unsqueeze(0) == jstar.unsqueeze(-1)).to(a.dtype).unsqueeze(1)  # (B, 1, n_out, k)
    w = weights * (window < parent_numel).to(a.dtype)
    total = w.sum(-1, keepdim=True)
    lam = torch.where(total > 0, w / total.clamp_min(torch.finfo(a.dtype).tiny), onehot)
    # exact windows pass all of a to x_jstar; the others pass their positive part along lambda
    coef = torch.where(loose, a - neg, torch.zeros_like(a)).unsqueeze(-1) * lam + \
        torch.where(loose, torch.zeros_like(a), a).unsqueeze(-1) * onehot
    index = window.reshape(1, 1, -1).expand(B, R, -1)
    return bias, rows.scatter_add(2, index, coef.reshape(B, R, -1))[:, :, :parent_numel]


def _needs_rows(dag: "Dag", i: int, l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(B, n) neurons of node i whose bounds can still change a relaxation, given bounds l, u (B, n):
    a ReLU's unstable inputs (l < 0 < u), and the inputs of a max pooling's windows that are not
    exact (`_maxpool_lines`). Tightening any other neuron leaves every relaxation as it is."""
    mask = torch.zeros_like(l, dtype=torch.bool)
    B, n = l.shape
    for c in dag.nodes:
        if not c.parents or c.parents[0] != i:
            continue
        if c.kind == "relu":
            mask |= (l < 0) & (u > 0)
        elif c.kind == "act":
            mask |= ~exact_on(_activation(c), l, u) & (u > l)
        elif c.kind == "maxpool":
            _, exact, _ = _maxpool_lines(c.window, l, u)
            k = c.window.shape[1]
            loose = (~exact).to(l.dtype).unsqueeze(2).expand(-1, -1, k).reshape(B, -1)
            marks = torch.zeros(B, n + 1, dtype=l.dtype, device=l.device)
            marks.scatter_reduce_(1, c.window.reshape(1, -1).expand(B, -1), loose, "amax")
            mask |= marks[:, :n] > 0
    return mask


# -- elementwise activations ----------------------------------------------------------------------
def _activation(n: Node) -> Activation:
    act = activation_of(n.layers[0])
    assert act is not None  # Dag._shapes refused the node otherwise
    return act


_ACT_CACHE = 64  # bound tensors whose lines a graph keeps


def _act_lines(dag: "Dag", n: Node, bounds_parent: tuple[torch.Tensor, torch.Tensor]) -> Lines:
    """certify/activation_lines.py's lines for node n's neurons over its input's bounds, flat (B, n),
    computed once per bound tensors: every backward pass through n reads them, and passes in parts
    of the points (chain_bounds.rows_in_parts) read row slices of the same tensors, which get the
    matching rows of the cached lines (found by storage, checked by offset, strides and version;
    crown_intermediate computes them on the whole batch first)."""
    cache: dict = dag.__dict__.setdefault("_act_lines", {})
    l, u = bounds_parent
    key = (id(n), l.untyped_storage().data_ptr(), u.untyped_storage().data_ptr())
    hit = cache.get(key)
    if hit is not None:
        fl, fu, versions, lines = hit
        start = _row_offset(fl, l)
        if start is not None and start == _row_offset(fu, u) and versions == (l._version, u._version):
            if start == 0 and l.shape[0] == fl.shape[0]:
                return lines
            sl = slice(start, start + l.shape[0])
            return Lines(lines.low_slope[sl], lines.low_icpt[sl], lines.up_slope[sl], lines.up_icpt[sl],
                         lines.exact[sl])
    lines = activation_lines(_activation(n), l.reshape(l.shape[0], -1), u.reshape(u.shape[0], -1))
    cache.pop(key, None)
    if len(cache) >= _ACT_CACHE:
        del cache[next(iter(cache))]
    cache[key] = (l, u, (l._version, u._version), lines)
    return lines


def _act_back_optimised(dag: "Dag", n: Node, a: torch.Tensor, bounds_parent, bias: torch.Tensor,
                        params: torch.Tensor):
    lines = _act_lines(dag, n, bounds_parent)
    l, u = (t.reshape(t.shape[0], -1) for t in bounds_parent)
    grid = slope_grid(_activation(n), l, u, cells=64)
    halves = params.dim() == 5  # (B, 2, 1, n, 2): one slope pair for the +rows, one for the -rows
    t = params[:, :, 0] if halves else params
    a_l, b_l = intercepts(grid, t[..., 0], upper=False)
    a_u, b_u = intercepts(grid, t[..., 1], upper=True)
    if halves:
        k = a.shape[1] // 2
        a_l, b_l, a_u, b_u = (v.repeat_interleave(k, dim=1) for v in (a_l, b_l, a_u, b_u))
    fixed = grid.fixed.unsqueeze(1)
    one = lambda t: t.reshape(t.shape[0], 1, -1)  # noqa: E731
    low_s, low_t = torch.where(fixed, one(lines.low_slope), a_l), torch.where(fixed, one(lines.low_icpt), b_l)
    up_s, up_t = torch.where(fixed, one(lines.up_slope), a_u), torch.where(fixed, one(lines.up_icpt), b_u)
    neg = a.clamp(max=0)
    pos = a - neg
    const = torch.where(pos == 0, torch.zeros_like(pos), pos * low_t) + torch.where(neg == 0, torch.zeros_like(neg), neg * up_t)
    return bias + const.sum(2), pos * low_s + neg * up_s


# alpha-CROWN's activation slopes for the specification: at most this many grid values per pass
# (points x rows x neurons x grid points, summed over the activations; autograd keeps them)
_ACT_ALPHA_ELEMENTS = 2**24
# A smooth activation's Adam step is this fraction of the ReLU slopes' (a point of the slope span moves the line's
# contact point; measured on GELU MLPs and the digits sigmoid MLP of benchmarks/activation_crown.py:
# full steps of 0.1 overshoot and stay at CROWN's bound, 0.2x gains less than 0.1x, 0.05x as much)
_ACT_LR = 0.1


def _act_params(dag: "Dag", bounds: dict, B: int, K: int, target: int | None = None) -> dict[int, torch.Tensor]:
    """alpha-CROWN's parameters of every activation `target` (default: the output) depends on,
    started at CROWN's slopes: (B, K, n, 2), one slope pair per row, while the grids stay under
    _ACT_ALPHA_ELEMENTS (the rest keep CROWN's lines); for an intermediate quantity (`target`
    given, K its 2k rows) (B, 2, 1, n, 2): one pair for its lower-bound rows, one for its upper."""
    out: dict[int, torch.Tensor] = {}
    used = 0
    for p, node in enumerate(dag.nodes):
        if node.kind != "act" or p not in dag.ancestors(dag.output if target is None else target):
            continue
        act = _activation(node)
        bq = bounds[node.parents[0]]
        l, u = (t.reshape(t.shape[0], -1) for t in bq)
        size = B * (2 if target is not None else K) * l.shape[1] * (65 + len(act.breakpoints))
        if used + size > _ACT_ALPHA_ELEMENTS:
            continue
        used += size
        lines = _act_lines(dag, node, bq)
        with torch.no_grad():
            grid = slope_grid(act, l.detach(), u.detach(), cells=64)
        t_low = slopes_to_params(grid, lines.low_slope.reshape(l.shape[0], 1, -1))
        t_up = slopes_to_params(grid, lines.up_slope.reshape(l.shape[0], 1, -1))
        pair = torch.stack([t_low, t_up], -1)  # (B, 1, n, 2)
        if target is None:
            out[p] = pair.expand(B, K, -1, 2).clone().requires_grad_(True)
        else:
            out[p] = pair.unsqueeze(1).expand(B, 2, 1, -1, 2).clone().requires_grad_(True)
    return out


def _row_offset(full: torch.Tensor, part: torch.Tensor) -> int | None:
    """The first row of `full` that `part` starts at, when `part` is full[s : s + k] (same storage,
    same strides, whole rows), else None."""
    if part.shape[1:] != full.shape[1:] or part.stride() != full.stride() or full.stride(0) == 0:
        return None
    off = part.data_ptr() - full.data_ptr()
    row = full.stride(0) * full.element_size()
    if off % row:
        return None
    start = off // row
    return start if 0 <= start and start + part.shape[0] <= full.shape[0] else None


def _act_back(dag: "Dag", n: Node, a: torch.Tensor, bounds_parent, bias: torch.Tensor,
              params: torch.Tensor | None = None):
    """Rows a (B, R, n) of an activation's output taken to its input: a positive coefficient takes
    the lower line a_l x + b_l, a negative one the upper line (CROWN, Zhang et al. 2018, Thm 3.2);
    the intercepts add to the constant. An infinite intercept (unbounded input) meets only zero
    coefficients or gives the bound -inf, never NaN. As chain_bounds._relax_rows: the constant by
    batched products, the rows in place where nothing needs gradients.

    `params` (B, R, n, 2) in [0, 1] (alpha-CROWN's, per row): the lower and upper slopes as points of
    each neuron's slope span, with intercepts made sound on the grid for every slope
    (activation_lines.intercepts); neurons with exact lines or unbounded inputs keep CROWN's."""
    if params is not None:
        return _act_back_optimised(dag, n, a, bounds_parent, bias, params)
    lines = _act_lines(dag, n, bounds_parent)
    low_s, low_t, up_s, up_t = (t.reshape(t.shape[0], 1, -1) for t in
                                (lines.low_slope, lines.low_icpt, lines.up_slope, lines.up_icpt))
    B = a.shape[0]
    neg = a.clamp(max=0)
    pos = a - neg
    if bool(torch.isfinite(low_t).all()) and bool(torch.isfinite(up_t).all()):
        bias = bias + torch.bmm(pos, low_t.expand(B, 1, -1).transpose(1, 2)).squeeze(2) \
            + torch.bmm(neg, up_t.expand(B, 1, -1).transpose(1, 2)).squeeze(2)
    else:
        const_l = torch.where(pos == 0, torch.zeros_like(pos), pos * low_t)
        const_u = torch.where(neg == 0, torch.zeros_like(neg), neg * up_t)
        bias = bias + (const_l + const_u).sum(2)
    if torch.is_grad_enabled() and a.requires_grad:
        return bias, pos * low_s + neg * up_s
    return bias, pos.mul_(low_s).add_(neg.mul_(up_s))


# -- IBP --------------------------------------------------------------------------------------------
def _ibp_node(dag: Dag, i: int, box: dict[int, tuple[torch.Tensor, torch.Tensor]], lo, hi):
    """Interval (l, u) of node i from its parents' intervals in `box`."""
    n = dag.nodes[i]
    if n.kind == "input":
        return lo, hi
    if n.kind == "relu":
        l, u = box[n.parents[0]]
        return F.relu(l), F.relu(u)
    if n.kind == "maxpool":  # monotone in every input: exact on a box
        l, u = box[n.parents[0]]
        return n.layers[0](l), n.layers[0](u)
    if n.kind == "act":
        return activation_range(_activation(n), *box[n.parents[0]])
    if n.kind == "add":
        parts = [box[q] for q in n.parents]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)
    if n.kind == "concat":
        parts = [box[q] for q in n.parents]
        B = max(p[0].shape[0] for p in parts)
        return tuple(torch.cat([p[k].expand(B, *p[k].shape[1:]) for p in parts], n.axis + 1) for k in (0, 1))
    l, u = box[n.parents[0]]
    c, r = (u + l) / 2, (u - l) / 2
    for m in n.layers:
        c, r = ibp_affine(m, c, r)
    return c - r, c + r


def ibp_nodes(dag: Dag, lo: torch.Tensor, hi: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """IBP intervals of every node (Gowal et al. 2018), each (B, *shape)."""
    box: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for i in range(len(dag.nodes)):
        box[i] = _ibp_node(dag, i, box, lo, hi)
    return box


# -- CROWN backward pass ----------------------------------------------------------------------------
def backward_lower(
    dag: Dag,
    target: int,
    A: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    bounds: dict[int, tuple[torch.Tensor, torch.Tensor]],
    alphas: dict[int, torch.Tensor] | None = None,
    ball: tuple[torch.Tensor, torch.Tensor] | None = None,
    bias: torch.Tensor | None = None,
    split_terms: dict[int, torch.Tensor] | None = None,
    record: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Lower bound (B, R) of A . v_target + bias over the input set; A (B, R, *shape of the target).

    `bounds[q]` (B, *shape): the interval of each node q feeding a ReLU or a max pooling between
    the target and the input. `alphas[r]` (B, R, n_r): lower slopes of ReLU node r's unstable neurons for these rows
    (else the adaptive choice). `ball` = (centre (B, *input), radius (B,)): the input set is also
    inside this L2 ball (see chain_bounds.backward_lower).

    `split_terms[q]` (B, R, n_q), q a node feeding a ReLU: Lagrangian terms -beta * sign added to
    the coefficients of v_q once all its consumers have sent theirs (beta-CROWN, Wang et al. 2021,
    eq. 7; see certify/bab.py). `record[q]` receives the coefficients of the output of the ReLU(s)
    fed by q (what BaBSR scores read), `record[-1]` those of the input (zero where the target does
    not depend on the input)."""
    a, bias = back_to_input(dag, target, A, bounds, alphas, bias, split_terms, record)
    if a is None:  # the target does not depend on the input
        return bias
    B = a.shape[0]
    c = ((hi + lo) / 2).reshape(lo.shape[0], 1, -1).expand(B, 1, -1)
    r = ((hi - lo) / 2).reshape(lo.shape[0], 1, -1).expand(B, 1, -1)
    out = torch.einsum("brn,bxn->br", a, c) - torch.einsum("brn,bxn->br", a.abs(), r)
    if ball is not None:
        x0, radius = ball
        out = torch.maximum(out, (a * x0.reshape(x0.shape[0], 1, -1)).sum(-1) - radius.reshape(-1, 1) * a.norm(dim=-1))
    return out + bias


def back_to_input(
    dag: Dag,
    target: int,
    A: torch.Tensor,
    bounds: dict[int, tuple[torch.Tensor, torch.Tensor]],
    alphas: dict[int, torch.Tensor] | None = None,
    bias: torch.Tensor | None = None,
    split_terms: dict[int, torch.Tensor] | None = None,
    record: dict[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """CROWN's backward pass (see `backward_lower`) up to the input: the rows' linear lower bound
    a . x + bias, as (a (B, R, n_input) or None if the target does not depend on the input, bias
    (B, R)). Where every relaxation on the way is exact (stable ReLUs, max pooling windows decided
    by their bounds) this is the target's affine function of the input on the bounds' domain."""
    B, R = A.shape[:2]
    coef: dict[int, torch.Tensor] = {target: A.reshape(B, R, -1)}
    bias = torch.zeros(B, R, dtype=A.dtype, device=A.device) if bias is None else bias

    def send(q: int, a: torch.Tensor) -> None:
        coef[q] = coef[q] + a if q in coef else a

    for i in range(target, 0, -1):
        a = coef.pop(i, None)
        if split_terms is not None and i in split_terms:
            # every consumer has sent its coefficients by now (reverse topological order), so the
            # term enters once per node, however many ReLUs read it
            a = split_terms[i] if a is None else a + split_terms[i]
        if a is None:
            continue
        n = dag.nodes[i]
        if n.kind == "affine":
            parent = dag.nodes[n.parents[0]]
            aw, b = back_affine(n.layers, parent.shape, a.reshape(B * R, *n.shape), n.shapes)
            send(n.parents[0], aw.reshape(B, R, -1))
            bias = bias + b.reshape(B, R)
        elif n.kind == "add":
            for q in n.parents:
                send(q, a)
        elif n.kind == "concat":
            sizes = [dag.nodes[q].shape[n.axis] for q in n.parents]
            parts = a.reshape(B, R, *n.shape).split(sizes, dim=n.axis + 2)
            for q, part in zip(n.parents, parts):
                send(q, part.reshape(B, R, -1))
        elif n.kind == "maxpool":
            weights = alphas.get(i) if alphas is not None else None
            bias, a = _maxpool_back(n, dag.nodes[n.parents[0]].numel, a, bounds[n.parents[0]], bias, weights)
            send(n.parents[0], a)
        elif n.kind == "act":
            params = alphas.get(i) if alphas is not None else None
            bias, a = _act_back(dag, n, a, bounds[n.parents[0]], bias, params)
            send(n.parents[0], a)
        else:  # relu
            q = n.parents[0]
            if record is not None:
                record[q] = record[q] + a if q in record else a
            l, u = (t.reshape(B, 1, -1) for t in bounds[q])
            up_s, up_t, low_s, unstable = _relu_lines(l, u)
            if alphas is not None and i in alphas:
                low_s = torch.where(unstable, alphas[i], low_s)
            bias, a = _relax_rows(a, low_s, up_s, up_t, bias)
            send(q, a)
    a = coef.get(0)
    if split_terms is not None and 0 in split_terms:  # a ReLU right on the input
        a = split_terms[0] if a is None else a + split_terms[0]
    if record is not None:
        record[-1] = a if a is not None else torch.zeros(B, R, dag.nodes[0].numel, dtype=bias.dtype, device=bias.device)
    return a, bias


# Rows of one backward pass are computed at most this many numbers of the widest node at a time
# (points times rows), so the working set stays bounded on wide convolutional layers.
_GROUP_ELEMENTS = 2**20
_PATCH_ROWS = 1024  # rows per pass when they are patches (each only a window of the map)


def _one_hot_rows(idx: torch.Tensor, n: int, shape: tuple[int, ...], dtype, device) -> torch.Tensor:
    """Rows (B, 2k, *shape): +e_idx then -e_idx (lower bounds of z[idx] and of -z[idx])."""
    B, k = idx.shape
    rows = torch.zeros(B, 2 * k, n, dtype=dtype, device=device)
    rows[:, :k].scatter_(2, idx.unsqueeze(2), 1.0)
    rows[:, k:].scatter_(2, idx.unsqueeze(2), -1.0)
    return rows.reshape(B, 2 * k, *shape)


def _rows_pass(dag: Dag, q: int, idx: torch.Tensor, lo, hi, bounds, ball) -> torch.Tensor:
    """Lower bounds (B, 2k) of v_q[idx] and -v_q[idx]: as patches where the graph below is
    convolutional (certify/dag_patches.py), else through an affine node as rows of its dense matrix
    (gathered, no pass through the node), else dense one-hot rows."""
    n = dag.nodes[q]
    if dag_patches.patchable(dag, q):
        try:
            return dag_patches.patch_rows_lower(dag, q, idx, lo, hi, bounds, ball)
        except dag_patches.NoPatches:
            dag.__dict__["_patchable"][q] = False
    if (dense := dag.dense(q)) is not None:
        w, b = dense
        wk, bk = w[idx], b[idx]  # (B, k, n_in), (B, k)
        parent = n.parents[0]
        return backward_lower(dag, parent, torch.cat([wk, -wk], 1), lo, hi, bounds, ball=ball, bias=torch.cat([bk, -bk], 1))
    return backward_lower(dag, q, _one_hot_rows(idx, n.numel, n.shape, dag.dtype, dag.device), lo, hi, bounds, ball=ball)


def _rows_lower(dag: Dag, q: int, idx: torch.Tensor, valid: torch.Tensor, lo, hi, bounds, ball,
                deadline: float | None = None) -> torch.Tensor:
    """Lower bounds (B, 2k) of v_q[idx] and -v_q[idx] (rows past a point's `valid` ones stay zero),
    in groups of points and rows (see _GROUP_ELEMENTS). Past `deadline` (time.monotonic()) it
    raises DeadlineReached, checked before every part."""
    B, k = idx.shape
    check_deadline(deadline)
    if idx.device.type != "cpu":
        return _rows_pass(dag, q, idx, lo, hi, bounds, ball)
    width = dag.width()
    step = max(1, _GROUP_ELEMENTS // (2 * k * width))
    per_call = _PATCH_ROWS if dag_patches.patchable(dag, q) else max(1, _GROUP_ELEMENTS // (2 * width))
    return cb.rows_in_parts(lambda *part: _rows_pass(dag, q, *part), idx, valid, lo, hi, bounds, ball, step, per_call,
                            deadline)


def crown_intermediate(
    dag: Dag, lo: torch.Tensor, hi: torch.Tensor, ball: tuple[torch.Tensor, torch.Tensor] | None = None,
    base: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None, crown: bool = True,
    intersect_ibp: bool = True, deadline: float | None = None,
    splits: dict[int, torch.Tensor] | None = None,
    newest_split: torch.Tensor | None = None,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Intervals (B, *shape) of every node feeding a ReLU or a max pooling: IBP from the bounds
    before it, intersected with `base` when given, then CROWN for the neurons whose bounds can still
    change a relaxation (`_needs_rows`) (`crown=False`: IBP only, i.e. CROWN-IBP's intermediate bounds).

    `splits[q]` (B, n_q) int8, q a node feeding a ReLU: +1 / -1 where branch and bound fixed the
    neuron active (v >= 0) / inactive (v <= 0) in that domain. Its interval is clamped (l = max(l, 0)
    / u = min(u, 0)) before any later node is bounded, so every later bound is the sub-problem's
    (beta-CROWN's refreshed intermediate bounds, Wang et al. 2021, without multipliers on the
    intermediate objectives). With splits and `base`, a node with no split node among its strict
    ancestors keeps `base` (clamped): nothing below it changed, so recomputing would give it again.
    A clamped lower bound above its upper bound means the domain holds no input. `newest_split`
    (B,) node ids (-1: none): per domain, the node of its newest split when `base` holds its
    parent's refreshed bounds (branch and bound's child domain); only nodes downstream of it get
    rows for that domain, the others already are the sub-problem's.

    `intersect_ibp=False`: CROWN's bounds alone, for every neuron (what auto_LiRPA 0.3's CROWN
    computes; for comparisons). The adaptive lower slope depends on the bounds, so tighter
    intermediate bounds can make a later bound slightly looser: the two modes differ both ways.

    Past `deadline` (time.monotonic()) it raises DeadlineReached (certify/deadline.py), checked
    before every bounded node and every part of its rows."""
    pre = set(dag.pre)
    box: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    B = lo.shape[0]
    split_nodes = {q for q, s in (splits or {}).items() if bool((s != 0).any())}
    if newest_split is not None and base is not None:
        split_nodes &= set(newest_split.tolist())
    for i, n in enumerate(dag.nodes):
        if splits is not None and base is not None and i in pre and not (split_nodes & (dag.ancestors(i) - {i})):
            bl, bu = _clamp_split(base[i], splits.get(i))
            out[i] = box[i] = (bl, bu)
            continue
        box[i] = _ibp_node(dag, i, box, lo, hi)
        if i not in pre:
            continue
        check_deadline(deadline)
        bl, bu = (t.expand(max(B, t.shape[0]), *t.shape[1:]) for t in box[i])
        if base is not None:
            bl, bu = torch.maximum(bl, base[i][0]), torch.minimum(bu, base[i][1])
        if splits is not None and i in splits:  # a split neuron is stable: no rows for it
            bl, bu = _clamp_split((bl, bu), splits[i])
        Bq = bl.shape[0]
        bl, bu = bl.reshape(Bq, -1), bu.reshape(Bq, -1)
        unstable = _needs_rows(dag, i, bl, bu)
        if newest_split is not None and base is not None:  # domains whose newest split is not below i
            below = torch.tensor([int(q) in dag.ancestors(i) - {i} for q in newest_split.tolist()], device=bl.device)
            unstable &= below.unsqueeze(1)
        if n.kind in ("relu", "act"):
            # A ReLU's output (a max pooling's input): [relu(l), relu(u)] from its input's bounds is
            # what CROWN's lines give too (the upper line's maximum is u, the lower line's minimum
            # is 0 or l), so no rows. An activation's output keeps its range over its input's bounds.
            unstable = torch.zeros_like(unstable)
        elif not intersect_ibp and crown and i != 0:  # every neuron gets CROWN's bound, nothing else
            unstable = torch.ones_like(unstable)
            bl, bu = torch.full_like(bl, -float("inf")), torch.full_like(bu, float("inf"))
        k = int(unstable.sum(1).max()) if unstable.numel() else 0
        direct = n.kind == "affine" and n.parents[0] == 0 and _ibp_exact(n.layers) and ball is None and intersect_ibp
        if crown and k > 0 and i != 0 and not direct:
            idx = torch.argsort(unstable.to(torch.int8), dim=1, descending=True, stable=True)[:, :k]
            valid = unstable.gather(1, idx)
            low = _rows_lower(dag, i, idx, valid, lo, hi, out, ball, deadline)
            inf = torch.tensor(float("inf"), dtype=dag.dtype, device=dag.device)
            bl = bl.scatter_reduce(1, idx, torch.where(valid, low[:, :k], -inf), "amax")
            bu = bu.scatter_reduce(1, idx, torch.where(valid, -low[:, k:], inf), "amin")
        if splits is not None and i in splits:
            bl, bu = _clamp_split((bl, bu), splits[i])
        out[i] = box[i] = (bl.reshape(Bq, *n.shape), bu.reshape(Bq, *n.shape))
        for c in dag.nodes:  # the lines of activations on i, once for the whole batch (see _act_lines)
            if c.kind == "act" and c.parents[0] == i:
                _act_lines(dag, c, out[i])
    return out


def _clamp_split(bounds: tuple[torch.Tensor, torch.Tensor], s: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A node's interval (B, ...) with its split neurons clamped: l >= 0 where s > 0 (active),
    u <= 0 where s < 0 (inactive); s (B, n) int8 or None."""
    l, u = bounds
    return cb.clamp_split(l, u, None if s is None else s.reshape(s.shape[0], *l.shape[1:]))


def crown_spec(dag: Dag, lo, hi, C, d=None, bounds=None, ball=None,
               deadline: float | None = None) -> tuple[torch.Tensor, dict]:
    """CROWN lower bound (B, K) of C f(x) + d, C (K, n_out) or (B, K, n_out); with the intermediate
    bounds. Past `deadline` it raises DeadlineReached (see crown_intermediate)."""
    bounds = bounds if bounds is not None else crown_intermediate(dag, lo, hi, ball, deadline=deadline)
    check_deadline(deadline)
    B = lo.shape[0]
    A = C.reshape(*C.shape[:-1], *dag.nodes[dag.output].shape)
    A = A.expand(B, *A.shape) if C.dim() == 2 else A
    low = backward_lower(dag, dag.output, A, lo, hi, bounds, ball=ball)
    return (low if d is None else low + d), bounds


# -- alpha-CROWN ------------------------------------------------------------------------------------
def alpha_crown_spec(
    dag: Dag, lo, hi, C, d, bounds: dict[int, tuple[torch.Tensor, torch.Tensor]], *, iterations: int = 20,
    lr: float = 0.1, deadline: float | None = None, stop_when_positive: bool = True,
    ball: tuple[torch.Tensor, torch.Tensor] | None = None,
    tightened_out: dict | None = None,
    intermediate: bool = True,
) -> torch.Tensor:
    """alpha-CROWN: optimise the lower slopes of every (ReLU, bounded quantity) pair, and for the
    specification also both slopes of every other activation (`_act_params`; their intercepts are
    recomputed soundly for each slope, certify/activation_lines.py).

    Bounded quantities: the specification, and (`intermediate`) each node feeding a ReLU, for the
    neurons that are unstable under `bounds` (the CROWN intermediate bounds, kept as a floor).
    `intermediate=False` keeps the intermediate bounds fixed and optimises the specification's
    slopes only (one backward pass per iteration instead of one per layer). Returns the best lower
    bound (B, K) per row over the iterations (iteration 0 is CROWN).

    Memory: the intermediate quantities' slopes take one value per (bounded neuron, ReLU neuron)
    pair; when those would exceed chain_bounds.ALPHA_ELEMENTS numbers (counted as dense, an upper
    bound of the patch form), only the specification's slopes are optimised and the intermediate
    bounds stay CROWN's, as in chain_bounds.alpha_crown_spec (sound, less tight).
    Past `deadline` (time.monotonic()) it stops after the current iteration and returns the best
    bound so far; inside the first iteration it raises DeadlineReached (no bound yet)."""
    B = lo.shape[0]
    K = C.shape[-2]
    A = C.reshape(*C.shape[:-1], *dag.nodes[dag.output].shape)
    A = A.expand(B, *A.shape) if C.dim() == 2 else A
    d = torch.zeros(B, K, dtype=dag.dtype, device=dag.device) if d is None else d
    bounds = {q: (l.detach(), u.detach()) for q, (l, u) in bounds.items()}
    relus = dag.relus

    def init(rows: int, r: int) -> torch.Tensor:
        l, u = (t.reshape(t.shape[0], 1, -1) for t in bounds[dag.nodes[r].parents[0]])
        return (u > -l).to(dag.dtype).expand(B, rows, -1).clone().requires_grad_(True)

    # Rows of each intermediate quantity: its neurons unstable under the CROWN bounds.
    rows_of: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for q in dag.pre if intermediate else []:
        if q == 0 or dag.nodes[q].kind in ("relu", "act"):  # they follow their input (_alpha_intermediate)
            continue
        l, u = (t.reshape(t.shape[0], -1) for t in bounds[q])
        unstable = _needs_rows(dag, q, l, u)
        k = int(unstable.sum(1).max()) if unstable.numel() else 0
        if k > 0 and any(dag.nodes[r].kind in ("relu", "act") for r in dag.ancestors(q) - {q}):  # else CROWN is exact for q
            idx = torch.argsort(unstable.to(torch.int8), dim=1, descending=True, stable=True)[:, :k]
            rows_of[q] = (idx, unstable.gather(1, idx))
    pairs = B * sum(2 * idx.shape[1] * sum(dag.nodes[r].numel for r in relus if r in dag.ancestors(q))
                    for q, (idx, _) in rows_of.items())
    if pairs > cb.ALPHA_ELEMENTS:
        rows_of = {}
    # Slopes of a convolutional quantity are kept in patch form (certify/dag_patches.py), created on
    # its first pass; others are dense (B, rows, n_relu).
    patched = {q for q in rows_of if dag_patches.patchable(dag, q)}
    inter: dict[int, dict[int, torch.Tensor]] = {
        q: {} if q in patched else {r: init(2 * idx.shape[1], r) for r in relus if r in dag.ancestors(q)}
        for q, (idx, _) in rows_of.items()}
    for q in rows_of:  # the activations below an intermediate quantity: a slope pair per side
        if q not in patched:
            inter[q].update(_act_params(dag, bounds, B, 2 * rows_of[q][0].shape[1], target=q))
    final = {r: init(K, r) for r in relus if r in dag.ancestors(dag.output)}
    # the specification's max pooling lower lines too (intermediate quantities keep x_jstar)
    for p in (i for i, n in enumerate(dag.nodes) if n.kind == "maxpool" and i in dag.ancestors(dag.output)):
        l, u = (t.reshape(t.shape[0], -1) for t in bounds[dag.nodes[p].parents[0]])
        jstar = _maxpool_lines(dag.nodes[p].window, l, u)[0]
        onehot = (dag.nodes[p].window.unsqueeze(0) == jstar.unsqueeze(-1)).to(dag.dtype)
        final[p] = onehot.unsqueeze(1).expand(B, K, *onehot.shape[1:]).clone().requires_grad_(True)
    # and the specification's activation slopes (every slope is sound: activation_lines.intercepts)
    final.update(_act_params(dag, bounds, B, K))
    params = [a for per in inter.values() for a in per.values()] + list(final.values())
    act_ids = {id(a) for per in (*inter.values(), final) for p, a in per.items()  # smooth activations' (_ACT_LR)
               if dag.nodes[p].kind == "act" and not _activation(dag.nodes[p]).piecewise_linear}
    if not params and not patched or K == 0:
        with torch.no_grad():
            low = backward_lower(dag, dag.output, A, lo, hi, bounds, ball=ball) + d
        if tightened_out is not None:
            tightened_out.update(bounds)
        return low
    moments: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # Adam's, per parameter (by id)
    best = torch.full((B, K), float("-inf"), dtype=dag.dtype, device=dag.device)
    tightened = {q: (l.clone(), u.clone()) for q, (l, u) in bounds.items()}
    for it in range(iterations):
        with torch.enable_grad():
            try:
                bnd = _alpha_intermediate(dag, lo, hi, rows_of, patched, inter, tightened, init, ball, deadline)
            except DeadlineReached:
                if it == 0:
                    raise
                break
            low = backward_lower(dag, dag.output, A, lo, hi, bnd, final, ball=ball) + d
            best = torch.maximum(best, low.detach())
            for q, (l, u) in bnd.items():
                tl, tu = tightened[q]
                tightened[q] = (torch.maximum(tl, l.detach()), torch.minimum(tu, u.detach()))
            if (stop_when_positive and bool((best > 0).all())) or (deadline is not None and time.monotonic() > deadline):
                break
            loss = -low.clamp(max=1e-2).sum()  # proven rows stop pulling on the shared slopes
            params = [a for per in inter.values() for a in per.values()] + list(final.values())
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            for a, g in zip(params, grads):
                if g is not None:
                    v1, v2 = moments.setdefault(id(a), (torch.zeros_like(a), torch.zeros_like(a)))
                    cb.projected_adam_step_(a, g, v1, v2, it, lr * _ACT_LR if id(a) in act_ids else lr)
    if tightened_out is not None:
        tightened_out.update(tightened)
    return best


def _alpha_intermediate(dag: Dag, lo, hi, rows_of, patched: set[int], inter, tightened, init, ball,
                        deadline: float | None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """One alpha-CROWN iteration's bounds of every node feeding a ReLU, in topological order, with
    the slopes `inter[q]` of each quantity in `rows_of` (others keep `tightened`); raises
    DeadlineReached past `deadline`, checked before each quantity."""
    relus = dag.relus
    B = lo.shape[0]
    bnd: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for q in dag.pre:
        bl, bu = tightened[q]
        if dag.nodes[q].kind == "relu":  # from its input's bounds of this iteration (see crown_intermediate)
            pl, pu = bnd[dag.nodes[q].parents[0]]
            bnd[q] = (torch.maximum(F.relu(pl), bl), torch.minimum(F.relu(pu), bu))
            continue
        if dag.nodes[q].kind == "act":  # its range over its input's bounds of this iteration
            al, au = activation_range(_activation(dag.nodes[q]), *bnd[dag.nodes[q].parents[0]])
            bnd[q] = (torch.maximum(al, bl), torch.minimum(au, bu))
            continue
        if q not in rows_of:
            bnd[q] = (bl, bu)
            continue
        check_deadline(deadline)
        idx, valid = rows_of[q]
        n = dag.nodes[q]
        k = idx.shape[1]
        low = None
        if q in patched:
            try:
                low = dag_patches.patch_rows_lower(dag, q, idx, lo, hi, bnd, ball, alphas=inter[q])
            except dag_patches.NoPatches:  # e.g. strides that differ at a fork: dense slopes
                patched.discard(q)
                inter[q] = {r: init(2 * k, r) for r in relus if r in dag.ancestors(q)}
        if low is None:
            rows = _one_hot_rows(idx, n.numel, n.shape, dag.dtype, dag.device)
            low = backward_lower(dag, q, rows, lo, hi, bnd, inter[q], ball=ball)
        fl, fu = bl.reshape(B, -1), bu.reshape(B, -1)
        l_new = fl.scatter(1, idx, torch.where(valid, low[:, :k], fl.gather(1, idx)))
        u_new = fu.scatter(1, idx, torch.where(valid, -low[:, k:], fu.gather(1, idx)))
        # The value is the intersection with the tightest bounds so far; the gradient is the
        # new bound's, so a slope whose bound is still looser keeps being optimised.
        l_cap, u_cap = torch.maximum(l_new, fl), torch.minimum(u_new, fu)
        bnd[q] = ((l_new + (l_cap - l_new).detach()).reshape(B, *n.shape),
                  (u_new + (u_cap - u_new).detach()).reshape(B, *n.shape))
    return bnd
