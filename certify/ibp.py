"""Native interval bound propagation (Gowal et al. 2018), differentiable, in centre/radius form.

For an affine layer with input box (c, r): c' = W c + b, r' = |W| r (two matmuls per layer,
Gowal et al. eq. 6); a ReLU maps [l, u] to [relu(l), relu(u)], and so does every layer that is
nondecreasing in each input (Gowal et al. sec. 3, monotonic activations): max pooling, sigmoid,
tanh and leaky ReLU map [l, u] to [f(l), f(u)] (for max pooling: the max of the lower ends and
the max of the upper ends of each window, which is exact for the box). Branches that fork from one
value are bounded from the same input set and summed (residual add) or concatenated (torch.cat).
The last Linear layer is merged with the specification C before bounding (auto_LiRPA's C matrix):
the margins' bounds are those of (C W) h + C b, far tighter than subtracting two logit intervals.

Input sets, always intersected with the pixel box [0, 1]:
- Linf: the box [max(x - eps, 0), min(x + eps, 1)].
- L2: the ball ||x' - x||_2 <= eps is carried exactly through the elementwise affine maps before
  the first Linear/Conv (normalisation, BN), as {c + s * d : ||d||_2 <= eps}. At that layer the
  ball gives W c + b +- eps * ||row of W diag(s)||_2 (the dual norm; for a convolution the row
  norm is computed per output position, so zero padding is exact) and the clipped box gives its
  own interval; the bound is their intersection, which is sound because both contain the image
  of (ball n box). Any other first layer falls back to the box of the ball n [0, 1].

BatchNorm: in eval mode an elementwise affine map from the running statistics. In train mode (or
without running statistics) it uses the statistics of the *clean* batch at that layer as a fixed
affine map, as Shi et al. 2021 (sec. 3.3) and auto_LiRPA do; the clean activations are propagated
alongside the bounds for that, and the running statistics are not updated (the training loop's
own clean forward pass does that). Gradients flow through the batch statistics, as in torch's BN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import nn

from robustcli.certify.activation_lines import activation_of, activation_range, covered
from robustcli.certify.bounds import Bounds, IBPResult
from robustcli.certify.graph import (
    CONSTANT_AFFINE,
    ELEMENTWISE_AFFINE,
    IDENTITY,
    POSITIVE_LINEAR,
    RESHAPE,
    SELECT,
    Step,
    UnsupportedLayer,
    describe,
    layers_of,
    model_steps,
    needs_clean_pass,
    nondecreasing,
    uses_batch_stats,
)
from robustcli.core.nn import Concat, Normalized

NORMS = ("linf", "l2")


@dataclass
class _L2Ball:
    """{centre + scale * d : ||d||_2 <= eps}; scale has the full shape of centre."""

    centre: torch.Tensor
    eps: torch.Tensor  # per point, shape (N,)
    scale: torch.Tensor

    def eps_like(self, t: torch.Tensor) -> torch.Tensor:
        return self.eps.view(-1, *([1] * (t.dim() - 1)))

    def box(self) -> Bounds:
        return Bounds(self.centre, self.eps_like(self.scale) * self.scale)


@dataclass
class _State:
    box: Bounds
    clean: torch.Tensor | None = None  # clean activations, only when some BN uses batch statistics
    ball: _L2Ball | None = None  # the exact L2 ball until the first non-elementwise layer
    relu_mode: str = "ibp"  # "ibp" or "local" (tightness: radius masked by the clean activation pattern)

    def collapse(self) -> "_State":
        """Forget the ball: intersect the box with the ball's own enclosing box."""
        if self.ball is None:
            return self
        return _State(_intersect(self.box, self.ball.box()), self.clean, None, self.relu_mode)


def _intersect(a: Bounds, b: Bounds) -> Bounds:
    lo = torch.maximum(a.lower, b.lower)
    hi = torch.minimum(a.upper, b.upper)
    return Bounds.from_interval(lo, torch.maximum(hi, lo))


def _per_point(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    e = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if e.dim() == 0:
        e = e.expand(len(x))
    if e.shape != (len(x),):
        raise ValueError(f"eps must be a float or a tensor of shape ({len(x)},), got shape {tuple(e.shape)}")
    if (e < 0).any():
        raise ValueError("eps must be >= 0")
    return e.view(-1, *([1] * (x.dim() - 1)))


def input_bounds(x: torch.Tensor, eps: float | torch.Tensor, norm: str = "linf") -> Bounds:
    """The box of the eps ball around x (both norms) intersected with [0, 1]."""
    e = _per_point(eps, x)
    return Bounds.from_interval((x - e).clamp(0, 1), (x + e).clamp(0, 1))


def _elementwise_affine(state: _State, a: torch.Tensor, b: torch.Tensor) -> _State:
    """y = a * x + b with a, b broadcastable per channel (normalisation, BN)."""
    box = Bounds(a * state.box.centre + b, a.abs() * state.box.radius)
    ball = None
    if state.ball is not None:
        c = a * state.ball.centre + b
        ball = _L2Ball(c, state.ball.eps, (a.abs() * state.ball.scale).expand_as(c))
    clean = None if state.clean is None else a * state.clean + b
    return _State(box, clean, ball, state.relu_mode)


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm, clean: torch.Tensor | None, ndim: int):
    """(scale, shift) of a BatchNorm as an elementwise affine map, shaped to broadcast over (N, C, ...)."""
    if uses_batch_stats(bn):
        if clean is None:
            raise RuntimeError("BatchNorm with batch statistics needs the clean activations")
        dims = [0] + list(range(2, clean.dim()))
        mean = clean.mean(dims)
        var = clean.var(dims, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    shape = (1, -1) + (1,) * (ndim - 2)
    return scale.view(shape), shift.view(shape)


def _affine_radius(m: nn.Module, r: torch.Tensor) -> torch.Tensor:
    """|W| r for a Linear or Conv2d (no bias)."""
    if isinstance(m, nn.Linear):
        return F.linear(r, m.weight.abs())
    return F.conv2d(r, m.weight.abs(), None, m.stride, m.padding, m.dilation, m.groups)


def _affine_row_norm_sq(m: nn.Module, s2: torch.Tensor) -> torch.Tensor:
    """sum_i W_ki^2 s_i^2 per output k: the squared L2 norm of each row of W diag(s)."""
    if isinstance(m, nn.Linear):
        return F.linear(s2, m.weight.square())
    return F.conv2d(s2, m.weight.square(), None, m.stride, m.padding, m.dilation, m.groups)


def _affine(state: _State, m: nn.Module) -> _State:
    centre = m(state.box.centre)
    box = Bounds(centre, _affine_radius(m, state.box.radius))
    clean = None if state.clean is None else m(state.clean)
    if state.ball is not None:
        rho = _affine_row_norm_sq(m, state.ball.scale.square()).clamp_min(0).sqrt()
        rho = state.ball.eps_like(rho) * rho
        box = _intersect(box, Bounds(m(state.ball.centre), rho))
    return _State(box, clean, None, state.relu_mode)


def _relu(state: _State, name: str, record: list[tuple[str, Bounds]] | None) -> _State:
    state = state.collapse()
    if record is not None:
        record.append((name, state.box))
    c, r = state.box.centre, state.box.radius
    if state.relu_mode == "local":
        # Local linearisation at the clean point: inactive neurons zeroed, active ones pass.
        active = (c > 0).to(c.dtype)
        box = Bounds(c * active, r * active)
    else:
        box = Bounds.from_interval(F.relu(c - r), F.relu(c + r))
    clean = None if state.clean is None else F.relu(state.clean)
    return _State(box, clean, None, state.relu_mode)


def _monotone(state: _State, f: nn.Module) -> _State:
    """A layer nondecreasing in every input (max pooling, sigmoid, tanh, leaky ReLU): [l, u] -> [f(l), f(u)].
    An L2 ball is not carried through a nonlinear map: it collapses to its box first, as at a ReLU."""
    state = state.collapse()
    box = Bounds.from_interval(f(state.box.lower), f(state.box.upper))
    clean = None if state.clean is None else f(state.clean)
    return _State(box, clean, None, state.relu_mode)


def _activation(state: _State, f: nn.Module) -> _State:
    """Any other elementwise activation certify/activation_lines.py covers (GELU, SiLU, Mish,
    Hardswish, LeakyReLU with a negative slope): [l, u] -> a sound [min f, max f] over it. That range
    is computed on a grid without gradients: certify/training.py refuses to train through such a layer
    (`refuse_untrainable`) rather than train on zero gradients."""
    state = state.collapse()
    lo, hi = activation_range(activation_of(f), state.box.lower.double(), state.box.upper.double())
    dt = state.box.lower.dtype
    box = Bounds.from_interval(_down(lo, dt), _up(hi, dt))
    clean = None if state.clean is None else f(state.clean)
    return _State(box, clean, None, state.relu_mode)


def _down(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 lower bounds in `dtype`, rounded down."""
    r = t.to(dtype)
    return torch.where(r.double() > t, torch.nextafter(r, torch.tensor(-math.inf, dtype=dtype, device=r.device)), r)


def _up(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    r = t.to(dtype)
    return torch.where(r.double() < t, torch.nextafter(r, torch.tensor(math.inf, dtype=dtype, device=r.device)), r)


def _same(state: _State, f) -> _State:
    """A linear map with nonnegative weights or a reshape: apply it to centre and radius."""
    ball = None
    if state.ball is not None and isinstance(f, RESHAPE):
        ball = _L2Ball(f(state.ball.centre), state.ball.eps, f(state.ball.scale))
    elif state.ball is not None:
        state = state.collapse()
    box = Bounds(f(state.box.centre), f(state.box.radius))
    return _State(box, None if state.clean is None else f(state.clean), ball, state.relu_mode)


def _run(steps: list[Step], state: _State, record, method: str) -> _State:
    for step in steps:
        state = _step(step, state, record, method)
    return state


def _step(step: Step, state: _State, record, method: str) -> _State:
    m = step.module
    if isinstance(m, Normalized):
        a = 1.0 / m.std
        return _elementwise_affine(state, a, -m.mean * a)
    if isinstance(m, CONSTANT_AFFINE):
        return _elementwise_affine(state, m.scale, m.shift)
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        return _affine(state, m)
    if isinstance(m, nn.ReLU):
        return _relu(state, step.name, record)
    if nondecreasing(m):
        return _monotone(state, m)
    if covered(m):
        return _activation(state, m)
    if isinstance(m, ELEMENTWISE_AFFINE):
        a, b = _bn_affine(m, state.clean, state.box.centre.dim())
        return _elementwise_affine(state, a, b)
    if isinstance(m, RESHAPE + POSITIVE_LINEAR + SELECT):  # a selection collapses an L2 ball to its box first
        return _same(state, m)
    if isinstance(m, IDENTITY):
        if isinstance(m, nn.Dropout) and m.training and m.p > 0:
            raise UnsupportedLayer(
                f"layer '{step.name}' (Dropout) is in training mode, which is random; "
                "put the model in eval mode before bounding it"
            )
        return state
    if isinstance(m, Concat):
        return _concat(step, state, record, method)
    if step.branches:
        state = state.collapse()
        outs = [_run(branch, state, record, method).collapse() for branch in step.branches]
        box = Bounds(sum(o.box.centre for o in outs), sum(o.box.radius for o in outs))
        clean = None if state.clean is None else sum(o.clean for o in outs)
        return _State(box, clean, None, state.relu_mode)
    raise UnsupportedLayer(f"{method} cannot bound layer '{step.name}' ({step.kind})")  # graph.py filters these


def _concat(step: Step, state: _State, record, method: str) -> _State:
    """Branches joined by torch.cat: each branch's box contains that branch's image of the input
    set, so their concatenation contains the image of the set (the box of a product is the product
    of the boxes). Each branch starts from the full state, so an L2 ball still reaches its first
    affine layer exactly; the joined value is a box (the ball's directions are shared across the
    branches, which a per-branch ball cannot express)."""
    outs = [_run(branch, state, record, method).collapse() for branch in step.branches]
    dim = step.module.dim
    box = Bounds(torch.cat([o.box.centre for o in outs], dim), torch.cat([o.box.radius for o in outs], dim))
    clean = None if state.clean is None else torch.cat([o.clean for o in outs], dim)
    return _State(box, clean, None, state.relu_mode)


def _merged_last_layer(state: _State, m: nn.Linear, spec: torch.Tensor) -> Bounds:
    """Bounds of (C W) h + C b: the last layer and the specification as one affine map."""
    w = torch.einsum("nsk,ki->nsi", spec, m.weight)
    c, r = state.box.centre.flatten(1), state.box.radius.flatten(1)
    # (C W) c + C b = C (W c + b): the centre through the K logits is cheaper than through C W.
    centre = torch.bmm(spec, m(c).unsqueeze(2)).squeeze(2)
    out = Bounds(centre, torch.bmm(w.abs(), r.unsqueeze(2)).squeeze(2))
    if state.ball is not None:
        s2 = state.ball.scale.flatten(1).square()
        rho = state.ball.eps[:, None] * torch.einsum("nsi,ni->ns", w.square(), s2).clamp_min(0).sqrt()
        ball_centre = torch.bmm(spec, m(state.ball.centre.flatten(1)).unsqueeze(2)).squeeze(2)
        out = _intersect(out, Bounds(ball_centre, rho))
    return out


def propagate(
    model: nn.Module,
    x: torch.Tensor,
    eps: float | torch.Tensor,
    norm: str = "linf",
    spec: torch.Tensor | None = None,
    *,
    relu_mode: str = "ibp",
    clip: bool = True,
    method: str = "ibp",
    record: list[tuple[str, Bounds]] | None = None,
    box: Bounds | None = None,
) -> tuple[Bounds, Bounds]:
    """Shared propagation for IBP and the tightness metric; returns (output bounds, input box).

    `box`: bound over this per-element box instead of the eps ball around x (x is then its centre,
    the clean point for BatchNorm in train mode)."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    steps = model_steps(model, method)
    e = _per_point(eps, x)
    if box is not None:
        norm = "linf"
    elif clip:
        if x.numel() and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
            raise ValueError("inputs must lie in [0, 1] (pixel space) for the ball to be clipped to it")
        box = input_bounds(x, eps, norm)
    else:
        box = Bounds(x, e.expand_as(x))
    ball = _L2Ball(x, e.flatten(), torch.ones_like(x)) if norm == "l2" else None
    clean = x if needs_clean_pass(steps) else None
    state = _State(box, clean, ball, relu_mode)
    if spec is not None:
        if spec.dim() != 3 or spec.shape[0] != len(x):
            raise ValueError(f"spec must have shape (N, S, K) with N={len(x)}, got {tuple(spec.shape)}")
        spec = spec.to(dtype=x.dtype, device=x.device)
    if spec is not None and steps and isinstance(steps[-1].module, nn.Linear):
        state = _run(steps[:-1], state, record, method)
        return _merged_last_layer(state, steps[-1].module, spec), box
    state = _run(steps, state, record, method).collapse()
    out = Bounds(state.box.centre.flatten(1), state.box.radius.flatten(1))
    if spec is not None:
        out = Bounds(torch.einsum("nsk,nk->ns", spec, out.centre), torch.einsum("nsk,nk->ns", spec.abs(), out.radius))
    return out, box


@overload
def ibp_bounds(
    model: nn.Module, x: torch.Tensor, eps: float | torch.Tensor, norm: str = ..., spec: torch.Tensor | None = ...,
    *, return_layers: Literal[False] = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...  # fmt: skip
@overload
def ibp_bounds(
    model: nn.Module, x: torch.Tensor, eps: float | torch.Tensor, norm: str = ..., spec: torch.Tensor | None = ...,
    *, return_layers: Literal[True],
) -> IBPResult: ...  # fmt: skip
def ibp_bounds(model, x, eps, norm="linf", spec=None, *, return_layers=False):
    """Interval bounds of the specification over the eps ball around x (Gowal et al. 2018).

    model: an nn.Sequential-style network mapping [0, 1] inputs (N, ...) to logits (N, K); its
      train/eval mode decides how BatchNorm is bounded (see the module docstring).
    eps: a float or a per-point tensor (N,); norm: "linf" or "l2".
    spec: C (N, S, K), e.g. `margin_spec(y, K)`; None bounds the logits themselves.
    Returns (lower, upper), each (N, S) (or (N, K)); with return_layers=True an `IBPResult` that
    also holds the input box and every pre-ReLU interval. Differentiable with respect to the
    model's parameters (and x). Raises `UnsupportedLayer` (an InputError) for layers it cannot bound.
    """
    record: list[tuple[str, Bounds]] | None = [] if return_layers else None
    out, box = propagate(model, x, eps, norm, spec, record=record)
    if not return_layers:
        return out.lower, out.upper
    return IBPResult(out.lower, out.upper, box, [b for _, b in record], [n for n, _ in record])


def ibp_box_bounds(
    model: nn.Module, lower: torch.Tensor, upper: torch.Tensor, spec: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval bounds of the specification over the per-element box [lower, upper] (each (N, ...))."""
    box = Bounds.from_interval(lower, upper)
    out, _ = propagate(model, box.centre, 0.0, "linf", spec, box=box)
    return out.lower, out.upper


def refuse_untrainable(model: nn.Module) -> None:
    """Certified training differentiates IBP's bounds; the range of a non-monotone activation
    (`_activation`) has no gradient, so such a layer is refused, named, before any training."""
    for s in layers_of(model_steps(model, "ibp"), (nn.Module,)):
        if covered(s.module) and not nondecreasing(s.module) and not isinstance(s.module, nn.ReLU):
            raise UnsupportedLayer(f"{describe(s)} is not monotone, and IBP training needs gradients through its "
                                   "bounds, which its range on each interval does not give; train with ReLU or a "
                                   "monotone activation")
