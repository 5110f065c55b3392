"""One bound engine: input sets, the `Bounder` interface, and the registry of method names.

A bounder answers one question: a sound lower bound of every row of C f(x) + d over an input set.
- `InputSet`: a per-element box [lower, upper], optionally also inside an L2 ball (centre,
  radius); `InputSet.ball(x, eps, norm)` is the eps ball intersected with the data domain [0, 1].
- `Bounder.lower(inputs, C, d)` -> (N, S) with C (N, S, K) and d (N, S) or None.
- `METHODS`: the one registry of method names (CLI choices, docs and dispatch all read it). Each
  entry builds a bounder for a model once (tracing, copies) and is then called per batch.

Native methods (IBP: Gowal et al. 2018; CROWN: Zhang et al. 2018; CROWN-IBP: Zhang et al. 2020;
alpha-CROWN: Xu et al. 2021) run on the canonical layer tree of the model: the model itself when
its modules are walkable, else the graph front end's rewrite (certify/trace.py), so a user's
`F.relu` / `x.view(x.size(0), -1)` CNN bounds the same from a module, `.pt2`, TorchScript or
ONNX. IBP walks the tree directly (residual adds, BatchNorm in train mode, exact L2 ball through
the first affine layer: certify/ibp.py); the CROWN family bounds chains of affine blocks and ReLUs
with certify/chain_bounds.py and ReLU graphs with residual adds and concatenations with
certify/dag_bounds.py (input boxes and balls alike; max pooling and the elementwise activations of
certify/activation_lines.py (sigmoid, tanh, GELU, SiLU, leaky ReLU, ...) relaxed there, so a chain
with either goes to the graph engine), and refuses other operations, naming them. A tree neither
engine covers (BatchNorm with batch statistics) goes to auto_LiRPA behind the same interface when
it is installed. The `lirpa-*` names always use auto_LiRPA.
"""

from __future__ import annotations

import warnings

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

from robustcli.certify import chain_bounds as cb
from robustcli.certify import dag_bounds as db
from robustcli.certify import maxpool_forms as mf
from robustcli.certify.activation_lines import covered
from robustcli.certify.graph import (
    IDENTITY,
    LINE_METHODS,
    RESHAPE,
    UnsupportedLayer,
    describe,
    layers_of,
    lirpa_crown_bounds,
    model_steps,
    monotone_layers,
)
from robustcli.certify.bounds import Bounds
from robustcli.certify.rounding import round_down, round_up
from robustcli.certify.ibp import ibp_bounds, ibp_box_bounds, propagate
from robustcli.certify.softmax_head import SoftmaxRows
from robustcli.core.errors import InputError
from robustcli.core.nn import Concat, LogProbabilities, eval_mode


def _outward(x: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x - e and x + e in x's dtype, rounded outward: the nearest float32 to x - eps can lie inside
    the ball, and a box that misses its edge is not the set the certificate speaks of."""
    if x.dtype == torch.float64:
        return x - e, x + e
    xd, ed = x.double(), e.double()
    return round_down(xd - ed, x.dtype), round_up(xd + ed, x.dtype)


@dataclass
class InputSet:
    """x with lower <= x <= upper elementwise (N, *shape), and, when it came from a ball, that ball:
    centre `x0`, radius `eps` (N,) and `norm`. For L2 the set is (ball n box): bounders may use
    either constraint (both contain the set)."""

    lower: torch.Tensor
    upper: torch.Tensor
    x0: torch.Tensor | None = None
    eps: torch.Tensor | None = None
    norm: str | None = None

    @classmethod
    def box(cls, lower: torch.Tensor, upper: torch.Tensor) -> "InputSet":
        if lower.shape != upper.shape or bool((lower > upper).any()):
            raise ValueError("an input box needs lower <= upper with equal shapes")
        return cls(lower, upper)

    @classmethod
    def ball(cls, x: torch.Tensor, eps: float | torch.Tensor, norm: str, domain: tuple[float, float] = (0.0, 1.0)) -> "InputSet":
        """The eps ball (linf or l2) around each point of x, intersected with the data domain."""
        if norm not in ("linf", "l2"):
            raise ValueError(f"unknown norm {norm!r}")
        e = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
        e = e.expand(len(x)) if e.dim() == 0 else e
        eb = e.view(-1, *([1] * (x.dim() - 1)))
        lower, upper = _outward(x, eb)
        return cls(lower.clamp(*domain), upper.clamp(*domain), x, e, norm)

    @property
    def l2_ball(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return (self.x0, self.eps) if self.norm == "l2" else None

    def __len__(self) -> int:
        return len(self.lower)

    def slice(self, s: slice) -> "InputSet":
        pick = lambda t: None if t is None else t[s]  # noqa: E731
        return InputSet(self.lower[s], self.upper[s], pick(self.x0), pick(self.eps), self.norm)


@dataclass
class ReluInputBounds:
    """Sound bounds of the values entering one ReLU (its pre-activations) over an input set:
    `lower`, `upper` (N, *shape) per point. `name` says which ReLU: the module path where the model
    names it, else its place in the network ("ReLU 2" is the second the network applies)."""

    name: str
    lower: torch.Tensor
    upper: torch.Tensor


class Bounder(Protocol):
    def lower(self, inputs: InputSet, C: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor: ...

    def intermediate(self, inputs: InputSet) -> list[ReluInputBounds]:
        """The bounds of every ReLU's input the method computes on its way, in network order."""
        ...


def _numbered(bounds: list[tuple[torch.Tensor, torch.Tensor]]) -> list[ReluInputBounds]:
    return [ReluInputBounds(f"ReLU {k}", l, u) for k, (l, u) in enumerate(bounds, 1)]


def walkable(model: nn.Module, example: torch.Tensor, method: str = "ibp") -> nn.Module:
    """The model if the native engines of `method` can walk its modules (graph.model_steps), else its
    canonical rewrite (trace.py)."""
    try:
        model_steps(model, method)
        return model
    except UnsupportedLayer as layer_error:
        from robustcli.certify.trace import UnsupportedOperation, canonical_model

        try:
            canon = canonical_model(model, example)
        except UnsupportedOperation:
            if layer_error.leaf:  # e.g. nn.Tanh: the module's own name says more than its ATen op
                raise layer_error from None
            raise
        try:
            model_steps(canon, method)  # e.g. a leaky_relu with a negative slope (IBP): refused here, before any bounding
        except UnsupportedLayer:
            if layer_error.leaf:  # the same layer, refused again: its module name says more
                raise layer_error from None
            raise
        return canon


def spec_chain(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> cb.Chain:
    """A float64 chain of the model for spec verification and branch and bound: the model's own
    layers when they form a chain, else the graph front end's rewrite. Raises NotAChain (with the
    reason) for graphs that are not chains (residual adds, concatenations: certify/dag_bounds.py
    bounds those) or have operations it cannot read."""
    try:
        return cb.Chain.of(model, input_shape)
    except cb.NotAChain as first:
        from robustcli.certify.trace import UnsupportedOperation, canonical_model

        p = next(model.parameters(), None)
        dtype = p.dtype if p is not None else torch.float32
        try:
            canon = canonical_model(model, torch.zeros(2, *input_shape, dtype=dtype, device=device))
        except UnsupportedOperation as e:
            raise cb.NotAChain(str(e)) from None
        try:
            return cb.Chain.of(canon, input_shape)
        except cb.NotAChain:
            raise cb.NotAChain(str(first)) from None


class IBPBounder:
    """Native interval bound propagation (certify/ibp.py), the last layer merged with C."""

    def __init__(self, model: nn.Module, example: torch.Tensor):
        self.model = walkable(model, example)

    def lower(self, inputs: InputSet, C: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        if inputs.norm is not None:  # the ball n [0, 1], with L2 carried exactly through the first affine layer
            low, _ = ibp_bounds(self.model, inputs.x0, inputs.eps, inputs.norm, C)
        else:
            low, _ = ibp_box_bounds(self.model, inputs.lower, inputs.upper, C)
        return low if d is None else low + d

    def intermediate(self, inputs: InputSet) -> list[ReluInputBounds]:
        record: list = []
        with torch.no_grad():
            if inputs.norm is not None:
                propagate(self.model, inputs.x0, inputs.eps, inputs.norm, record=record)
            else:
                box = Bounds.from_interval(inputs.lower, inputs.upper)
                propagate(self.model, box.centre, 0.0, "linf", box=box, record=record)
        return [ReluInputBounds(name, b.lower, b.upper) for name, b in record]


class CrownBounder:
    """Native CROWN / CROWN-IBP / alpha-CROWN: on a chain by certify/chain_bounds.py, on a graph
    with residual adds and concatenations by certify/dag_bounds.py (raises NotAChain for layers
    neither covers).

    On a max pooling graph with CROWN's intermediate bounds, points whose DeepPoly bound leaves a
    row at or below zero are bounded again with both max pooling relaxations
    (certify/maxpool_forms.py: the ReLU form costs 10x-100x the DeepPoly form, so only there), if
    the ReLU form wins a row on the first open points (`maxpool_forms.relu_form_pays`).

    `intermediate`: "crown" (CROWN bounds for every ReLU's input) or "ibp" (CROWN-IBP).
    `alpha_iterations` > 0 optimises the lower slopes (alpha-CROWN). Computes in `dtype` (float64
    by default: the bound is sound up to its rounding) and in point chunks of at most
    `max_elements` floats of backward coefficients, so memory stays bounded on large CNNs.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, *, intermediate: str = "crown",
                 alpha_iterations: int = 0, dtype: torch.dtype = torch.float64, max_elements: int = 2**27,
                 method: str = "crown"):
        model = walkable(model, example, method)
        refuse_monotone(model, method)
        self.dag: db.Dag | None = None
        try:
            self.chain = cb.Chain.of(model, tuple(example.shape[1:]), dtype)
        except cb.NotAChain:
            self.dag = db.Dag.of(model, tuple(example.shape[1:]), dtype)  # NotADag (a NotAChain) if it cannot
        # Max pooling: also its ReLU form's relaxation where DeepPoly's lines leave a point open
        # (certify/maxpool_forms.py); CROWN-IBP's IBP intervals of the ReLU form's steps are loose.
        self.forms = mf.TwoForms.of(self.dag) if self.dag is not None and intermediate == "crown" else None
        self.relu_form_pays: bool | None = None  # decided on the first open points (mf.relu_form_pays)
        self.relu_bounds = intermediate  # "crown" or "ibp"
        self.alpha_iterations = alpha_iterations
        self.max_elements = max_elements

    def _chunk(self) -> int:
        if self.dag is not None:
            widest = self.dag.width()
        else:
            widest = max(max(_numel(s) for s in self.chain.in_shapes), max(_numel(s) for s in self.chain.out_shapes))
        return max(1, self.max_elements // (2 * widest * widest))

    def lower(self, inputs: InputSet, C: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        if self.dag is not None:
            return self._dag_lower(inputs, C, d)
        ch = self.chain
        out = []
        step = self._chunk()
        for s in range(0, len(inputs), step):
            part = inputs.slice(slice(s, s + step))
            lo, hi = part.lower.to(ch.device, ch.dtype), part.upper.to(ch.device, ch.dtype)
            ball = None if part.l2_ball is None else tuple(t.to(ch.device, ch.dtype) for t in part.l2_ball)
            Cs = C[s : s + step].to(ch.device, ch.dtype)
            A = Cs.reshape(Cs.shape[0], Cs.shape[1], *ch.out_shapes[-1])
            with torch.no_grad():
                base = cb.ibp_intermediate(ch, lo, hi)
                inter = base if self.relu_bounds == "ibp" else cb.crown_intermediate(ch, lo, hi, base=base, ball=ball)
                if self.alpha_iterations > 0:
                    low = cb.alpha_crown_spec(ch, lo, hi, Cs, torch.zeros(Cs.shape[:2], dtype=ch.dtype, device=ch.device),
                                              inter, iterations=self.alpha_iterations, stop_when_positive=False, ball=ball)
                else:
                    low = cb.backward_lower(ch, len(ch.blocks) - 1, A, lo, hi, inter, ball=ball)
            out.append(low)
        low = torch.cat(out).to(C.dtype).to(C.device)
        return low if d is None else low + d

    def intermediate(self, inputs: InputSet) -> list[ReluInputBounds]:
        """CROWN's bounds of every ReLU input (CROWN-IBP: IBP's); alpha-CROWN optimises its slopes for
        a specification, so without one it reports CROWN's."""
        g = self.dag if self.dag is not None else self.chain
        parts: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        step = self._chunk()
        for s in range(0, len(inputs), step):
            part = inputs.slice(slice(s, s + step))
            lo, hi = part.lower.to(g.device, g.dtype), part.upper.to(g.device, g.dtype)
            ball = None if part.l2_ball is None else tuple(t.to(g.device, g.dtype) for t in part.l2_ball)
            with torch.no_grad():
                if self.dag is not None:
                    inter = db.crown_intermediate(self.dag, lo, hi, ball, crown=self.relu_bounds != "ibp")
                    parts.append([inter[i] for i in self.dag.relu_inputs])
                else:
                    base = cb.ibp_intermediate(self.chain, lo, hi)
                    parts.append(base if self.relu_bounds == "ibp"
                                 else cb.crown_intermediate(self.chain, lo, hi, base=base, ball=ball))
        dtype, device = inputs.lower.dtype, inputs.lower.device
        return _numbered([(torch.cat([p[k][0] for p in parts]).to(device, dtype),
                           torch.cat([p[k][1] for p in parts]).to(device, dtype)) for k in range(len(parts[0]))])

    def _dag_lower(self, inputs: InputSet, C: torch.Tensor, d: torch.Tensor | None) -> torch.Tensor:
        g = self.dag
        out = []
        # alpha-CROWN keeps slopes per (ReLU, quantity, row) and autograd's record of every backward
        # pass: measured about 1 GB per point on a 1,568-wide residual MNIST CNN, so fewer points at once.
        step = self._chunk() if self.alpha_iterations == 0 else max(1, self._chunk() // (8 * max(1, len(g.relus))))
        for s in range(0, len(inputs), step):
            part = inputs.slice(slice(s, s + step))
            lo, hi = part.lower.to(g.device, g.dtype), part.upper.to(g.device, g.dtype)
            ball = None if part.l2_ball is None else tuple(t.to(g.device, g.dtype) for t in part.l2_ball)
            Cs = C[s : s + step].to(g.device, g.dtype)
            with torch.no_grad():
                started = time.monotonic()
                inter = db.crown_intermediate(g, lo, hi, ball, crown=self.relu_bounds != "ibp")
                low, _ = db.crown_spec(g, lo, hi, Cs, None, inter, ball=ball)
                crown_low = low
                crown_seconds = (time.monotonic() - started) / len(lo)
                if self.alpha_iterations > 0:  # its first iterate is CROWN's up to the lines' grid: keep the better
                    low = torch.maximum(crown_low, db.alpha_crown_spec(
                        g, lo, hi, Cs, None, inter, iterations=self.alpha_iterations, stop_when_positive=False,
                        ball=ball))
                if self.forms is not None:
                    ds = None if d is None else d[s : s + step].to(g.device, g.dtype)
                    if self.relu_form_pays is None:
                        self.relu_form_pays = mf.relu_form_pays(self.forms, lo, hi, Cs, ds, crown_low, inter, ball=ball,
                                                                seconds_per_point=crown_seconds)
                    if self.relu_form_pays:
                        low = mf.tighten_open_points(self.forms, lo, hi, Cs, ds, low, inter, crown_low=crown_low,
                                                     alpha_iterations=self.alpha_iterations,
                                                     stop_when_positive=False, ball=ball)
            out.append(low)
        low = torch.cat(out).to(C.dtype).to(C.device)
        return low if d is None else low + d


def refuse_monotone(model: nn.Module, method: str) -> None:
    """The native CROWN engine relaxes ReLUs, max pooling (certify/dag_bounds.py) and every elementwise
    activation certify/activation_lines.py covers: any other monotone layer (a clamp with low > high,
    a softplus with beta <= 0) is refused, named, with only the methods that bound the model: native
    IBP, and auto_LiRPA's CROWN when installed and every such layer, max pooling included, is one its
    0.3 release bounds (`graph.lirpa_crown_bounds`)."""
    every = monotone_layers(model_steps(model, method if method in LINE_METHODS else "crown"))
    found = [s for s in every if not isinstance(s.module, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) and not covered(s.module)]
    if not found:
        return
    from robustcli.certify.lirpa import lirpa_available

    lirpa = lirpa_available() and all(lirpa_crown_bounds(s.module) for s in every)
    alternatives = "--method ibp" + (" or lirpa-crown (auto_LiRPA)" if lirpa else "")
    raise UnsupportedLayer(
        f"native {method} has no linear relaxation of {describe(found[0])} of this model; use {alternatives}"
    )


class LirpaMethodBounder:
    """auto_LiRPA (certify/lirpa.py) behind the same interface; `method` is one of its names.

    `norm`, when known at build time: an L2 bounder of a model with concatenations is tried once on
    one point, so a concatenation auto_LiRPA 0.3 cannot bound under an L2 ball is refused before
    any work (see `_refuse_l2_concat`)."""

    def __init__(self, model: nn.Module, example: torch.Tensor, method: str, *, alpha_iterations: int = 20,
                 norm: str | None = None, label: str | None = None, fallback: str = "try --method ibp"):
        from robustcli.certify.lirpa import LirpaBounder

        self.inner = LirpaBounder(model, example, method, alpha_iterations=alpha_iterations, fallback=fallback)
        self.label = label or method  # the method name the user chose
        try:
            self.steps = model_steps(model, "ibp")
        except UnsupportedLayer:
            self.steps = []  # a model only auto_LiRPA reads: its own error messages stand
        if norm == "l2" and layers_of(self.steps, (Concat,)):
            x = example[:1]
            with torch.no_grad(), eval_mode(model):
                spec = torch.zeros(1, 1, model(x).shape[1], dtype=x.dtype, device=x.device)
            self.lower(InputSet.ball(x, 1e-3, "l2"), spec)

    def _eps(self, inputs: InputSet) -> float:
        if inputs.norm is None:
            raise InputError("the auto_LiRPA methods here bound eps balls; use a native method for input boxes")
        eps = inputs.eps
        if bool((eps != eps[0]).any()):
            raise InputError("the auto_LiRPA methods here need one eps for the whole batch")
        return float(eps[0])

    def intermediate(self, inputs: InputSet) -> list[ReluInputBounds]:
        """The bounds auto_LiRPA keeps on each ReLU's input node after bounding the logits."""
        self.inner.bounds(inputs.x0, self._eps(inputs), inputs.norm, None, bound_upper=False)
        return _numbered([(relu.inputs[0].lower.detach(), relu.inputs[0].upper.detach())
                          for relu in self.inner.module.relus])

    def lower(self, inputs: InputSet, C: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        eps = self._eps(inputs)
        try:
            low, _ = self.inner.bounds(inputs.x0, eps, inputs.norm, C, bound_upper=False)
        except InputError as e:
            if "BoundConcat" in str(e) and self.steps:
                _refuse_l2_concat(self.steps, self.label)
            raise
        return low if d is None else low + d


def _refuse_l2_concat(steps: list, method: str) -> None:
    """auto_LiRPA 0.3's interval step through a concatenation (BoundConcat) takes an L2 ball only when
    every part is that ball itself; a part that is the input, only reshaped, next to a computed part
    fails there (measured: IBP and CROWN-IBP always, CROWN when it asks for that interval)."""
    joins = _input_joins(steps)[0] or layers_of(steps, (Concat,))
    raise UnsupportedLayer(
        f"{method} bounds this graph through auto_LiRPA 0.3, which cannot bound {describe(joins[0])} of this model "
        "under an L2 ball (it joins the unchanged input with computed values); use --method ibp"
    )


def _input_joins(steps: list, raw: bool = True) -> tuple[list, bool]:
    """(the Concat steps that join the input itself, only reshaped, with computed values; whether the
    output of `steps` is still the input itself) for steps entered with `raw`."""
    found = []
    for s in steps:
        if isinstance(s.module, Concat):
            outs = [_input_joins(b, raw) for b in s.branches]
            found += [f for fs, _ in outs for f in fs]
            kinds = {r for _, r in outs}
            if kinds == {True, False}:
                found.append(s)
            raw = kinds == {True}
        elif s.branches:
            found += [f for b in s.branches for f in _input_joins(b, raw)[0]]
            raw = False
        elif not isinstance(s.module, RESHAPE + IDENTITY):
            raw = False
    return found, raw


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _native_or_lirpa(name: str, intermediate: str, alpha: bool, lirpa_name: str):
    def build(model: nn.Module, example: torch.Tensor, alpha_iterations: int = 20, norm: str | None = None) -> Bounder:
        tree = walkable(model, example, name)
        try:
            return CrownBounder(tree, example, intermediate=intermediate,
                                alpha_iterations=alpha_iterations if alpha else 0, method=name)
        except cb.NotAChain as e:
            from robustcli.certify.lirpa import lirpa_available

            if not lirpa_available():
                raise UnsupportedLayer(f"the native CROWN engine cannot bound this model ({e}) and auto_LiRPA, "
                                       "which bounds general graphs, is not installed") from None
            # The canonical tree, not the user's object: auto_LiRPA traces plain modules, and a .pt2
            # program or TorchScript module then bounds exactly as the module it was saved from.
            return LirpaMethodBounder(tree, example, lirpa_name, alpha_iterations=alpha_iterations, norm=norm,
                                      label=name)

    return build


def _lirpa(name: str):
    def build(model: nn.Module, example: torch.Tensor, alpha_iterations: int = 20, norm: str | None = None) -> Bounder:
        fallback = "try --method ibp"
        try:
            # The canonical tree where the front end reads the model: auto_LiRPA's own tracer keeps
            # `x.view(x.size(0), -1)` at the traced batch size and cannot read .pt2 / TorchScript.
            model = walkable(model, example)
        except InputError:  # an operation only auto_LiRPA may bound (SiLU, ...): it reads the model itself
            fallback = "the native methods cannot bound it either"
        label = name if name.startswith("lirpa-") else f"lirpa-{name}"
        return LirpaMethodBounder(model, example, name, alpha_iterations=alpha_iterations, norm=norm, label=label,
                                  fallback=fallback)

    return build


@dataclass(frozen=True)
class Method:
    """A registry entry: `build(model, example, alpha_iterations=..., norm=...)` returns a bounder
    (`norm`, "linf" or "l2" when known, lets a builder refuse a ball it cannot bound before any work)."""

    name: str
    summary: str
    build: Callable[..., Bounder]
    needs_lirpa: bool = False


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("ibp", "interval bound propagation (native)", lambda model, example, **_: IBPBounder(model, example)),
        Method("crown-ibp", "CROWN with IBP intermediate bounds (native)", _native_or_lirpa("crown-ibp", "ibp", False, "crown-ibp")),
        Method("crown", "CROWN linear relaxations (native)", _native_or_lirpa("crown", "crown", False, "crown")),
        Method("alpha-crown", "CROWN with optimised lower slopes (native)", _native_or_lirpa("alpha-crown", "crown", True, "alpha-crown")),
        Method("lirpa-ibp", "IBP through auto_LiRPA", _lirpa("lirpa-ibp"), True),
        Method("lirpa-crown-ibp", "CROWN-IBP through auto_LiRPA", _lirpa("crown-ibp"), True),
        Method("lirpa-crown", "CROWN through auto_LiRPA", _lirpa("crown"), True),
        Method("lirpa-alpha-crown", "alpha-CROWN through auto_LiRPA", _lirpa("alpha-crown"), True),
    )
}


def build_bounder(method: str, model: nn.Module, example: torch.Tensor, **options) -> Bounder:
    """The bounder registered as `method` for this model (raises InputError naming what is missing)."""
    if method not in METHODS:
        raise InputError(f"unknown bound method {method!r}; choose one of {', '.join(METHODS)}")
    from robustcli.certify.trace import UnsupportedOperation

    try:
        stripped = without_final_head(model, example)
        bounder = METHODS[method].build(stripped[0] if stripped is not None else model, example, **options)
    except UnsupportedOperation as e:
        if METHODS[method].needs_lirpa:
            raise
        raise UnsupportedOperation(f"{e}{_lirpa_verdict(model, example)}") from None
    if stripped is None:
        return bounder
    if stripped[1] == "log_softmax":
        return MarginRows(bounder)
    if stripped[1] == "log_probabilities":
        return SoftmaxRows(bounder, log_tiny=torch.finfo(example.dtype).tiny)
    return SoftmaxRows(bounder)


_HEADS = {nn.LogSoftmax: "log_softmax", nn.Softmax: "softmax"}


def without_final_head(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, str] | None:
    """(the layer tree of the model without its final log-softmax or softmax over its classes, which
    head it was: "log_softmax", "softmax", or "log_probabilities" for core.nn.LogProbabilities
    around a model ending in a softmax, as the CLI wraps such models), or None for any other model.
    PyTorch's own MNIST example ends in a log-softmax; Keras and many exporters write a final
    softmax. The bounders bound the logits and answer the rows over the head from them
    (MarginRows; SoftmaxRows in certify/softmax_head.py). A functional `F.softmax` /
    `F.log_softmax` and an ONNX Softmax node reach here as the graph front end's last layer
    (certify/trace.py); a softmax anywhere else is refused by the engines, naming it."""
    if isinstance(model, LogProbabilities):
        inner = without_final_head(model.model, example)
        return (inner[0], "log_probabilities") if inner is not None and inner[1] == "softmax" else None

    def plain(tree: nn.Module) -> bool:  # a Sequential subclass with its own forward may compute anything
        return isinstance(tree, nn.Sequential) and type(tree).forward is nn.Sequential.forward

    def strip(tree: nn.Module) -> tuple[nn.Module, str] | None:
        if plain(tree) and len(tree) > 1:
            last = tree[-1]
            head = _HEADS.get(type(last))
            if head is not None and last.dim in (1, -1):
                return nn.Sequential(*list(tree)[:-1]), head
            inner = strip(last)
            return None if inner is None else (nn.Sequential(*list(tree)[:-1], inner[0]), inner[1])
        return None

    def over_classes(found: tuple[nn.Module, str] | None) -> tuple[nn.Module, str] | None:
        """Only a head over flat logits (N, K): a softmax over a feature map's channels is not one."""
        if found is None:
            return None
        with torch.no_grad(), eval_mode(found[0]):
            z = found[0](example[:1])
        return found if z.dim() == 2 else None

    stripped = strip(model)
    if stripped is not None or plain(model):
        return over_classes(stripped)
    from robustcli.certify.trace import UnsupportedOperation, canonical_model

    try:  # a functional head: the graph front end writes it as the tree's last layer
        return over_classes(strip(canonical_model(model, example)))
    except UnsupportedOperation:
        return None  # the method's own front end says what it cannot read


class MarginRows:
    """A bounder of a model's logits z standing for the same model with a final log-softmax: rows C
    that sum to zero (margins between classes) have C log_softmax(z) = C z exactly, so their bounds
    are the logits' bounds; any other row is refused (log-sum-exp would need its own relaxation)."""

    def __init__(self, logits: Bounder):
        self.logits = logits

    def lower(self, inputs: InputSet, C: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        if bool((C.sum(-1).abs() > 1e-9 * C.abs().amax(-1).clamp_min(1.0)).any()):
            raise InputError("the model ends with a log-softmax, which is bounded only for specifications whose "
                             "rows sum to zero (margins between classes); export the logits before it")
        return self.logits.lower(inputs, C, d)

    def intermediate(self, inputs: InputSet) -> list[ReluInputBounds]:
        return self.logits.intermediate(inputs)


def _lirpa_verdict(model: nn.Module, example: torch.Tensor) -> str:
    """Whether auto_LiRPA's CROWN bounds a model the native engines refuse, found by bounding one point
    (its support depends on the whole graph, not only on the operation), so a refusal never points to
    a method that fails too."""
    from robustcli.certify.lirpa import LirpaBounder, lirpa_available

    if not lirpa_available():
        return ""
    x = example[:1]
    # a probe whose only result is this verdict: the library's warnings on the way are not the user's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.no_grad(), eval_mode(model):
                spec = torch.zeros(1, 1, model(x).shape[1], dtype=x.dtype, device=x.device)
            LirpaBounder(model, x, "crown").bounds(x, 1e-3, "linf", spec, bound_upper=False)
        except Exception:  # noqa: BLE001 - any failure of auto_LiRPA means it is no alternative here
            return "; auto_LiRPA 0.3 (the lirpa-* methods) cannot bound it either"
    return "; --method lirpa-crown (auto_LiRPA) bounds it"
