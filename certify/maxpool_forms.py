"""CROWN and alpha-CROWN on max pooling graphs with two relaxations of the pooling at once.

The graph engine (certify/dag_bounds.py) relaxes a window's maximum y = max_j x_j with DeepPoly's
lines (Singh et al. 2019, sec. 4): y >= x_j* and the constant y <= max_j u_j. The same function
written with ReLUs (certify/maxpool_relus.py: m_j = m_{j-1} + relu(x_j - m_{j-1})) is relaxed by
CROWN's ReLU lines (Zhang et al. 2018, Thm 3.2) at every step of the running maximum, whose upper
lines are linear in the window's inputs instead of constant, while every step adds the slack of
one more ReLU relaxation. Neither dominates (notes/15-poolform.md, per margin row): on a small
digits CNN (pooling, then a dense ReLU layer) the ReLU form was tighter on 163-180 of 180 rows
(98-82 of 180 with 3x3 windows at the largest radius); on MNIST CNNs (pooling, then a strided
convolution) it was looser on every row.

Both are sound bounds of the same network, so:
- per bounded neuron, the intersection of the two intervals is a sound interval; here the nodes
  the two graphs share (every node but the pooling's internal steps: `relu_form`'s node map) are
  intersected. The DeepPoly form is bounded first (its CROWN intervals, as the engine computes them
  alone); the ReLU form is then bounded with those intervals as its floor
  (`crown_intermediate(base=)` intersects node by node in topological order, so an interval
  tightened early tightens every later node's bound); the DeepPoly form's shared nodes then take the
  result.
- per specification row, the largest of the lower bounds is a sound lower bound: the DeepPoly
  form's on its own intervals (so the result is never below what the engine gives alone, even
  where tighter intervals move CROWN's adaptive slopes the wrong way), the DeepPoly form's on the
  intersected intervals and the ReLU form's.

alpha-CROWN (Xu et al. 2021, sec. 3.1) runs on the DeepPoly form first (cheap: its pooling adds no
ReLUs); rows it leaves at or below zero are then bounded by alpha-CROWN on the ReLU form from the
intervals both have tightened, the larger bound per row kept. Cost: the ReLU form adds k - 1 ReLU
layers of the pooled map's size per pooling (k the window size) and its rows are dense (no patch
form through the gathers), so its CROWN cost about 10x the DeepPoly form's on the digits CNN and
15x-200x on the MNIST CNNs; callers run it only where the DeepPoly form leaves a row unproved,
and the dataset bounder only if `relu_form_pays` on its first open points.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from robustcli.certify import dag_bounds as db
from robustcli.certify.deadline import DeadlineReached
from robustcli.certify.maxpool_relus import relu_form

Intervals = dict[int, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TwoForms:
    """A max pooling graph (`dag`, DeepPoly's lines), its ReLU form (`relu`) and `node_of[i]`, the
    ReLU form's node holding the value of `dag`'s node i."""

    dag: db.Dag
    relu: db.Dag
    node_of: dict[int, int]

    @classmethod
    def of(cls, dag: db.Dag) -> "TwoForms | None":
        """None for a graph without max pooling (one relaxation only)."""
        if not any(n.kind == "maxpool" for n in dag.nodes):
            return None
        relu, node_of = relu_form(dag)
        return cls(dag, relu, node_of)


@dataclass
class TwoFormBounds:
    """Intermediate intervals of both forms (each as its crown_intermediate returns them)."""

    dag: Intervals  # the DeepPoly form's, intersected with the ReLU form's
    relu: Intervals  # the ReLU form's, bounded with the DeepPoly form's as a floor
    own: Intervals  # the DeepPoly form's own CROWN intervals


def _meet(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]):
    return torch.maximum(a[0], b[0]), torch.minimum(a[1], b[1])


def _unbounded(dag: db.Dag, i: int, B: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (B, *dag.nodes[i].shape)
    return (torch.full(shape, -float("inf"), dtype=dag.dtype, device=dag.device),
            torch.full(shape, float("inf"), dtype=dag.dtype, device=dag.device))


def dag_to_relu_base(forms: TwoForms, dag_bounds: Intervals, B: int) -> Intervals:
    """The DeepPoly form's intervals as a floor for every node the ReLU form bounds
    (`relu.pre`); a pooling step (not a node of the DeepPoly form) gets (-inf, inf)."""
    back = {j: i for i, j in forms.node_of.items()}
    return {j: dag_bounds[back[j]] if j in back and back[j] in dag_bounds else _unbounded(forms.relu, j, B)
            for j in forms.relu.pre}


def relu_to_dag(forms: TwoForms, relu_bounds: Intervals, dag_bounds: Intervals) -> Intervals:
    """`dag_bounds` with every node the ReLU form also bounds intersected with its interval there."""
    out = dict(dag_bounds)
    for i in out:
        j = forms.node_of[i]
        if j in relu_bounds:
            out[i] = _meet(out[i], relu_bounds[j])
    return out


def dag_to_relu(forms: TwoForms, dag_bounds: Intervals, relu_bounds: Intervals) -> Intervals:
    """`relu_bounds` with every node `forms.dag` also bounds intersected with its interval there."""
    out = dict(relu_bounds)
    for i, b in dag_bounds.items():
        j = forms.node_of[i]
        if j in out:
            out[j] = _meet(out[j], b)
    return out


def _at_points(pick: torch.Tensor, B: int, lo, hi, C, d, ball, intervals: Intervals):
    """The problem of `B` points restricted to the points `pick`: (lo, hi, C, d, ball, intervals). A
    tensor whose first axis is not the points' (an input box of batch 1, margins C (K, n) shared by
    every point) is kept whole."""
    sub = lambda t: t[pick] if t.shape[0] == B else t  # noqa: E731
    return (sub(lo), sub(hi), sub(C) if C.dim() == 3 else C, None if d is None else sub(d),
            None if ball is None else (sub(ball[0]), sub(ball[1])),
            {q: (sub(l), sub(u)) for q, (l, u) in intervals.items()})


def crown_intermediate(forms: TwoForms, lo: torch.Tensor, hi: torch.Tensor,
                       ball: tuple[torch.Tensor, torch.Tensor] | None = None,
                       deadline: float | None = None, own: Intervals | None = None) -> TwoFormBounds:
    """CROWN intervals of both forms, shared nodes intersected (see the module docstring): the
    DeepPoly form's own (`own` when already computed), the ReLU form's on top of them, and the
    DeepPoly form's shared nodes from those. Past `deadline` it raises DeadlineReached."""
    d = own if own is not None else db.crown_intermediate(forms.dag, lo, hi, ball, deadline=deadline)
    r = db.crown_intermediate(forms.relu, lo, hi, ball, base=dag_to_relu_base(forms, d, lo.shape[0]),
                              deadline=deadline)
    return TwoFormBounds(relu_to_dag(forms, r, d), r, d)


def crown_spec(forms: TwoForms, lo, hi, C, d=None, bounds: TwoFormBounds | None = None, ball=None,
               deadline: float | None = None) -> tuple[torch.Tensor, TwoFormBounds]:
    """Lower bound (B, K) of C f(x) + d: per row the largest of CROWN's bounds on the DeepPoly form
    (its own intervals and the intersected ones) and on the ReLU form."""
    bounds = bounds if bounds is not None else crown_intermediate(forms, lo, hi, ball, deadline)
    low = db.crown_spec(forms.dag, lo, hi, C, d, bounds.own, ball=ball, deadline=deadline)[0]
    low = torch.maximum(low, db.crown_spec(forms.dag, lo, hi, C, d, bounds.dag, ball=ball, deadline=deadline)[0])
    low = torch.maximum(low, db.crown_spec(forms.relu, lo, hi, C, d, bounds.relu, ball=ball, deadline=deadline)[0])
    return low, bounds


def alpha_crown_spec(forms: TwoForms, lo, hi, C, d, bounds: TwoFormBounds, *, iterations: int = 20,
                     deadline: float | None = None, stop_when_positive: bool = True,
                     ball: tuple[torch.Tensor, torch.Tensor] | None = None,
                     tightened_out: dict | None = None, relu_alpha: str = "wins") -> torch.Tensor:
    """alpha-CROWN on the DeepPoly form from the intersected intervals, then, on the points with a
    row still at or below zero, on the ReLU form from the intervals both have tightened
    (`relu_alpha`: "wins": only on points where the ReLU form's CROWN bound beats that bound on an
    open row; "open": on every point with an open row); per row the larger bound, never below CROWN's `crown_spec` (iteration 0 of either run is CROWN). `tightened_out`
    receives both forms' optimised intervals ("dag", "relu"), shared nodes intersected. The ReLU
    form gets the time left before `deadline`; inside its first iteration the DeepPoly form's
    bound is returned."""
    dp0 = db.crown_spec(forms.dag, lo, hi, C, d, bounds.own, ball=ball)[0]
    relu0 = db.crown_spec(forms.relu, lo, hi, C, d, bounds.relu, ball=ball)[0]
    td: Intervals = {}
    dp = torch.maximum(dp0, db.alpha_crown_spec(forms.dag, lo, hi, C, d, bounds.dag, iterations=iterations,
                                                deadline=deadline, stop_when_positive=stop_when_positive,
                                                ball=ball, tightened_out=td))
    low = torch.maximum(dp, relu0)
    relu_in = dag_to_relu(forms, td, bounds.relu)
    if tightened_out is not None:
        tightened_out.update(dag=td, relu=relu_in)
    open_ = (low <= 0).any(1)
    if relu_alpha == "wins":
        # alpha-CROWN improves from CROWN's slopes: where the ReLU form's CROWN bound is below the
        # DeepPoly form's alpha-CROWN bound on every open row, its alpha-CROWN was measured to
        # stay below too (notes/15-poolform.md), at up to 20x the DeepPoly form's cost
        open_ &= ((relu0 > dp) & (low <= 0)).any(1)
    if not bool(open_.any()):
        return low
    # only the points with an open row: the ReLU form's passes cost most of the work
    pick = open_.nonzero().flatten()
    lo_p, hi_p, C_p, d_p, ball_p, relu_p = _at_points(pick, low.shape[0], lo, hi, C, d, ball, relu_in)
    tr: Intervals = {}
    try:
        low_r = db.alpha_crown_spec(forms.relu, lo_p, hi_p, C_p, d_p, relu_p, iterations=iterations, deadline=deadline,
                                    stop_when_positive=stop_when_positive, ball=ball_p, tightened_out=tr)
    except DeadlineReached:
        return low
    low = low.clone()
    low[pick] = torch.maximum(low[pick], low_r)
    if tightened_out is not None and pick.numel() == low.shape[0]:
        tightened_out.update(dag=relu_to_dag(forms, tr, td), relu=tr)
    return low


def tighten_open_points(forms: TwoForms, lo, hi, C, d, low: torch.Tensor, own: Intervals, *,
                        crown_low: torch.Tensor | None = None, alpha_iterations: int = 0,
                        stop_when_positive: bool = True,
                        ball: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """`low` (B, K), the DeepPoly form's bound of C f(x) (without d) from its intervals `own`, raised
    by both forms' bound (`crown_spec`, or `alpha_crown_spec` with `alpha_iterations` > 0) on the
    points where the DeepPoly form's CROWN bound `crown_low` (default `low`) plus d has a row at or
    below zero. Points already proved keep `low`: the ReLU form costs 10x to 100x the DeepPoly
    form's CROWN (module docstring), and a proved point gains nothing a verifier reads. Choosing
    the points by CROWN's bound for alpha-CROWN too keeps alpha-CROWN's result >= CROWN's per row."""
    ref = low if crown_low is None else crown_low
    open_ = ((ref if d is None else ref + d) <= 0).any(1)
    if not bool(open_.any()):
        return low
    pick = open_.nonzero().flatten()
    lo_p, hi_p, C_p, d_p, ball_p, own_p = _at_points(pick, low.shape[0], lo, hi, C, d, ball, own)
    with torch.no_grad():
        tb = crown_intermediate(forms, lo_p, hi_p, ball_p, own=own_p)
        if alpha_iterations > 0:
            better = alpha_crown_spec(forms, lo_p, hi_p, C_p, d_p, tb, iterations=alpha_iterations,
                                      stop_when_positive=stop_when_positive, ball=ball_p)
        else:
            better = crown_spec(forms, lo_p, hi_p, C_p, d_p, tb, ball=ball_p)[0]
    if d_p is not None:
        better = better - d_p  # `low` is without d
    out = low.clone()
    out[pick] = torch.maximum(low[pick], better)
    return out


PROBE_POINTS = 4  # open points `relu_form_pays` bounds both ways
PROBE_COST = 50.0  # the most the probe may take, in DeepPoly CROWN passes per probed point
PROBE_FLOOR_SECONDS = 2.0  # ... but never less than this (timer noise on tiny models)


def relu_form_pays(forms: TwoForms, lo, hi, C, d, crown_low: torch.Tensor, own: Intervals,
                   ball: tuple[torch.Tensor, torch.Tensor] | None = None,
                   seconds_per_point: float | None = None) -> bool | None:
    """Does the ReLU form's CROWN bound beat the DeepPoly form's on an open row of this model?
    Bounded on the first `PROBE_POINTS` points whose DeepPoly CROWN bound `crown_low` (+ d) has a
    row at or below zero; None when no point is open (ask again later). Measured
    (notes/15-poolform.md), the answer is a property of the model rather than of the point: on a
    digits CNN the ReLU form won 98-180 of 180 rows, on MNIST CNNs none, at 15x-200x the cost; a
    dataset bounder asks once and then uses the ReLU form on every open point or on none.

    `seconds_per_point`: the DeepPoly form's CROWN time per point; a probe that takes more than
    `PROBE_COST` times that per probed point (at least `PROBE_FLOOR_SECONDS`) is stopped and
    answers False: on wide maps the ReLU form's dense rows would cost more than any gain seen."""
    ref = crown_low if d is None else crown_low + d
    open_ = (ref <= 0).any(1)
    if not bool(open_.any()):
        return None
    pick = open_.nonzero().flatten()[:PROBE_POINTS]
    lo_p, hi_p, C_p, _, ball_p, own_p = _at_points(pick, crown_low.shape[0], lo, hi, C, None, ball, own)
    deadline = None
    if seconds_per_point is not None:
        deadline = time.monotonic() + max(PROBE_FLOOR_SECONDS, PROBE_COST * seconds_per_point * len(pick))
    try:
        with torch.no_grad():
            tb = crown_intermediate(forms, lo_p, hi_p, ball_p, deadline, own=own_p)
            relu = db.crown_spec(forms.relu, lo_p, hi_p, C_p, None, tb.relu, ball=ball_p, deadline=deadline)[0]
    except DeadlineReached:
        return False
    with torch.no_grad():
        dp = torch.maximum(crown_low[pick], db.crown_spec(forms.dag, lo_p, hi_p, C_p, None, tb.dag, ball=ball_p)[0])
    return bool(((relu > dp + 1e-9) & (ref[pick] <= 0)).any())
