"""Verify a VNNLIB property on a model: attack first, then bound engines in order of cost.

Answers (VNN-COMP 2021 words):
- `violated`: a counterexample input lies in the box and the reference evaluator (onnxruntime for
  ONNX files, else the model itself) puts its outputs in the violation region. Nothing else earns
  this answer: a candidate the reference does not confirm is discarded.
- `holds`: every violation conjunction of every box is refuted by a sound lower bound > 0 on one
  of its margins (IBP, CROWN or alpha-CROWN, see certify/chain_bounds.py), or by branch and
  bound on ReLU splits (certify/bab.py) for the conjunctions those leave open. Models that are
  not chains are bounded by native IBP in float64 (certify/ibp.py) where it walks them; their
  CROWN stages run natively in float64 on ReLU graphs with residual adds, concatenations and max
  pooling (certify/dag_bounds.py; a case DeepPoly's max pooling lines leave open is bounded again
  with the pooling's ReLU form too, certify/maxpool_forms.py), and through auto_LiRPA
  (certify/spec_lirpa.py) for graphs that engine does not cover (smooth activations). Branch and
  bound runs on chains and on the ReLU graphs of the native engine (certify/bab_network.py adapts
  either; ReLU splits take a max pooling in its ReLU form, certify/maxpool_relus.py, from
  alpha-CROWN's intervals of both forms); graphs only auto_LiRPA bounds get no `bab` stage.

Stage `bab` spends up to a quarter of the remaining time on a longer attack (5x the restarts, 2x
the steps) before branching, because the bound stages leave open exactly the instances where a
counterexample is most likely.
- `unknown`: every stage ran and none decided; `timeout`: the time budget ran out first.

Output heads: a model whose output is a final softmax or log-softmax over its classes (an ONNX
file ending in a Softmax node) is bounded by every stage as its logits, and the property's rows
over its outputs are answered from the logits' bounds (`logits_and_head`; certify/softmax_head.py,
`SpecRows`: margin rows exactly by sign, branch and bound on them; other rows through intervals
of p). Attacks, searches and the reference see the model itself.

Precision: every bound stage bounds the model in its own precision (float64 copies of a float32
model are exact; a float64 model, such as an ONNX file of float64 weights converted with
`onnx_to_torch(path, dtype=None)`, keeps its float64 weights), so a `holds` is about the file's
weights and never about weights rounded to float32. The attacks run on a float32 copy
(`attack_copy`) and only propose candidates for the reference to confirm.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from robustcli.certify import chain_bounds as cb
from robustcli.certify import dag_bounds as db
from robustcli.certify import maxpool_forms as mf
from robustcli.certify.bab import BabOutcome, bab_refute
from robustcli.certify.bab_network import as_bab_network
from robustcli.certify.bounders import spec_chain
from robustcli.certify.deadline import DeadlineReached
from robustcli.certify.input_bab import input_bab_refute
from robustcli.certify.spec_lirpa import lirpa_box_lower
from robustcli.certify.softmax_head import SpecRows
from robustcli.certify.spec_attack import float32_box, spec_pgd
from robustcli.certify.vnnlib import SpecCase, VnnlibProperty
from robustcli.core.errors import InputError
from robustcli.core.nn import model_float_dtype

METHODS = ("attack", "ibp", "crown", "alpha-crown", "bab")
BAB_SPLITS = ("auto", "input", "relu")
BAB_BOUNDS = ("auto", "reuse", "refresh")
REUSE_SHARE = 0.3  # of the branch-and-bound time, spent keeping parent bounds before refreshing them
ATTACK_SHARE = 0.25  # of the time left, the most the first attack stage takes when bound stages follow


@dataclass
class SpecResult:
    status: str  # holds | violated | unknown | timeout
    method: str | None  # the stage that decided
    seconds: float
    counterexample: torch.Tensor | None = None  # (n_inputs,) float32, flat in VNNLIB's X order
    outputs: torch.Tensor | None = None  # the reference's outputs at the counterexample
    confirmed_by: str | None = None
    stages: list[dict] = field(default_factory=list)  # per stage: method, seconds, refuted, total, note


def refuted(lower: torch.Tensor, case: SpecCase) -> torch.Tensor:
    """(B, D) bool: disjunct j is impossible in domain b (one of its margins is bounded above 0). A
    lower bound of +inf is no proof: finite weights over a finite box give finite bounds, so +inf is
    float overflow, whose true value may be anything."""
    _, _, rows = case.stacked()
    if not rows:
        return torch.ones(lower.shape[0], 0, dtype=torch.bool)
    lower = torch.where(torch.isfinite(lower), lower, torch.zeros((), dtype=lower.dtype, device=lower.device))
    return torch.stack(
        [(lower[:, sl] > 0).any(1) if sl.stop > sl.start else torch.zeros(lower.shape[0], dtype=torch.bool, device=lower.device)
         for sl in rows], 1)


def _native_ibp_model(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> nn.Module | None:
    """A float64 copy of the layer tree native IBP walks (residual adds, max pooling, monotone
    activations: certify/ibp.py), or None when it cannot bound the model (auto_LiRPA is tried then)."""
    from robustcli.certify.bounders import walkable
    from robustcli.certify.graph import UnsupportedLayer
    from robustcli.certify.trace import UnsupportedOperation

    try:
        tree = walkable(model, torch.zeros(2, *input_shape, dtype=model_float_dtype(model), device=device))
    except (UnsupportedLayer, UnsupportedOperation):
        return None
    return copy.deepcopy(tree).double().eval()


def _native_dag(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> db.Dag | None:
    """The float64 graph that native CROWN bounds (residual adds, concatenations, max pooling, ReLUs and
    the activations of certify/activation_lines.py: certify/dag_bounds.py), or None when it has
    other layers (auto_LiRPA is tried then)."""
    from robustcli.certify.bounders import walkable
    from robustcli.certify.graph import UnsupportedLayer
    from robustcli.certify.trace import UnsupportedOperation

    try:
        tree = walkable(model, torch.zeros(2, *input_shape, dtype=model_float_dtype(model), device=device), "crown")
        return db.Dag.of(tree, input_shape)
    except (UnsupportedLayer, UnsupportedOperation, db.NotADag):
        return None


def _native_ibp_box_lower(tree: nn.Module, case: SpecCase, input_shape: tuple[int, ...], C: torch.Tensor,
                          d: torch.Tensor) -> torch.Tensor:
    """(1, S) lower bound of C f(x) + d over the case's box, by native IBP in float64."""
    from robustcli.certify.ibp import ibp_box_bounds

    q = next(tree.parameters(), None)
    dev = q.device if q is not None else torch.device("cpu")
    lo = case.lower.to(dev, torch.float64).reshape(1, *input_shape)
    hi = case.upper.to(dev, torch.float64).reshape(1, *input_shape)
    with torch.no_grad():
        lower, _ = ibp_box_bounds(tree, lo, hi, C.to(dev, torch.float64)[None])
    return lower + d.to(dev, torch.float64)


def _native_dag_box_lower(dag: db.Dag, case: SpecCase, input_shape: tuple[int, ...], C: torch.Tensor, d: torch.Tensor,
                          method: str, bounds: dict, ci: int, alpha_iterations: int, t0: float,
                          deadline: float | None, bab_follows: bool,
                          forms: mf.TwoForms | None = None,
                          view: Callable[[torch.Tensor], torch.Tensor] = lambda low: low) -> torch.Tensor:
    """(1, S) lower bound of C f(x) + d over the case's box by native CROWN / alpha-CROWN on the
    graph; the case's CROWN intermediate bounds are computed once and kept in `bounds`. On a max
    pooling graph (`forms`), a case DeepPoly's lines leave open is bounded again with both max
    pooling relaxations (certify/maxpool_forms.py); alpha-CROWN's intervals of the pooling's ReLU
    form are kept for branch and bound. Past `deadline` the CROWN passes raise DeadlineReached (the
    verifier answers `timeout`). `view` maps the bounds of the rows C to the case's rows (a softmax
    head's `SpecRows.certificates`), to see whether the case is decided."""
    C, d = C.to(dag.device, dag.dtype), d.to(dag.device, dag.dtype)
    lo = case.lower.to(dag.device, dag.dtype).reshape(1, *input_shape)
    hi = case.upper.to(dag.device, dag.dtype).reshape(1, *input_shape)
    with torch.no_grad():
        started = time.monotonic()
        inter = bounds.get((ci, "dag-crown"))
        if inter is None:
            inter = bounds[(ci, "dag-crown")] = db.crown_intermediate(dag, lo, hi, deadline=deadline)
        if method == "crown":
            low = db.crown_spec(dag, lo, hi, C, d, inter, deadline=deadline)[0]
            if forms is not None and not bool(refuted(view(low), case).all()):
                # the ReLU form costs 10x-200x DeepPoly's CROWN: at most 30% of the time left, so
                # the later stages keep theirs, and at most mf.PROBE_COST DeepPoly passes (as the
                # dataset bounder's probe); stopped there, DeepPoly's bound stands
                now = time.monotonic()
                until = now + max(mf.PROBE_FLOOR_SECONDS, mf.PROBE_COST * (now - started))
                if deadline is not None:
                    until = min(until, now + 0.3 * (deadline - now))
                try:
                    two = mf.crown_intermediate(forms, lo, hi, deadline=until, own=inter)
                    low = torch.maximum(low, mf.crown_spec(forms, lo, hi, C, d, two, deadline=until)[0])
                    bounds[(ci, "two-form")] = two
                except DeadlineReached:
                    if deadline is not None and time.monotonic() > deadline:
                        raise
            return low
        # At most 40% of the remaining time when branch and bound follows, as for chains.
        until = t0 + 0.4 * (deadline - t0) if deadline is not None and bab_follows else deadline
        tight: dict = {}
        low = db.alpha_crown_spec(dag, lo, hi, C, d[None], inter, iterations=alpha_iterations, deadline=until,
                                  tightened_out=tight)
        bounds[(ci, "dag-alpha")] = tight  # branch and bound starts from them
        if forms is not None and not bool(refuted(view(low), case).all()):
            # both relaxations from alpha-CROWN's tightened intervals; its share of the time is
            # what the DeepPoly form left of the 40%
            both: dict = {}
            try:
                two = mf.crown_intermediate(forms, lo, hi, deadline=until, own=tight)
                # branch and bound splits the ReLU form: its roots want alpha-CROWN on it even where
                # its CROWN bound starts below DeepPoly's
                low = torch.maximum(low, mf.alpha_crown_spec(forms, lo, hi, C, d[None], two, iterations=alpha_iterations,
                                                             deadline=until, tightened_out=both,
                                                             relu_alpha="open" if bab_follows else "wins"))
                bounds[(ci, "two-form-alpha")] = both
            except DeadlineReached:
                if deadline is not None and time.monotonic() > deadline:
                    raise
        return low


def _relu_form_roots(forms: mf.TwoForms, lo, hi, C, d, bounds: dict, ci: int, alpha_iterations: int, t0: float,
                     deadline: float | None) -> dict:
    """Intervals of the max pooling's ReLU form that ReLU branch and bound starts from: the
    alpha-crown stage's (both relaxations, alpha-CROWN on each) when it ran on this case, else
    alpha-CROWN on both forms here with at most a fifth of the time left."""
    if (ci, "two-form-alpha") in bounds:
        return bounds[(ci, "two-form-alpha")]["relu"]
    two = bounds.get((ci, "two-form"))
    if two is None:
        own = bounds.get((ci, "dag-alpha")) or bounds.get((ci, "dag-crown"))
        two = bounds[(ci, "two-form")] = mf.crown_intermediate(forms, lo, hi, deadline=deadline, own=own)
    if alpha_iterations <= 0:
        return two.relu
    until = t0 + 0.2 * (deadline - t0) if deadline is not None else None
    both: dict = {}
    try:
        mf.alpha_crown_spec(forms, lo, hi, C, d[None], two, iterations=alpha_iterations, deadline=until,
                            tightened_out=both, relu_alpha="open")
    except DeadlineReached:
        if deadline is not None and time.monotonic() > deadline:
            raise
        return two.relu
    bounds[(ci, "two-form-alpha")] = both
    return both["relu"]


def logits_and_head(model: nn.Module, input_shape: tuple[int, ...], device: torch.device,
                    box: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[nn.Module, str | None]:
    """(the model the bound stages bound, the head they answer through): a model whose output is a
    final softmax or log-softmax over its classes is bounded as its logits (bounders.without_final_head)
    and its property rows are answered through certify/softmax_head.py (`SpecRows`); any other
    model is bounded as it is. Only outputs that look like (log-)probabilities at the centre of
    `box` (one forward pass) are looked at further, so other models are never traced twice."""
    from robustcli.certify.bounders import without_final_head

    dtype = model_float_dtype(model)
    x = torch.zeros(2, *input_shape, dtype=dtype, device=device)
    if box is not None:
        x = ((box[0] + box[1]) / 2).to(device, dtype).reshape(1, *input_shape).expand(2, *input_shape)
    try:
        with torch.no_grad():
            y = model.eval()(x).double()
    except Exception:  # noqa: BLE001 - a model that does not run here is for the stages to refuse
        return model, None
    if y.dim() != 2:
        return model, None
    probabilities = bool((y >= 0).all()) and bool(((y.sum(1) - 1).abs() < 1e-3).all())
    log_probabilities = bool((y <= 0).all()) and bool((torch.logsumexp(y, 1).abs() < 1e-3).all())
    if not (probabilities or log_probabilities):
        return model, None
    try:
        found = without_final_head(model, x)
    except InputError:
        return model, None
    return (model, None) if found is None else found


def attack_copy(model: nn.Module) -> nn.Module:
    """The model the attacks run (in float32, for speed): the model itself when it is float32, else a
    float32 copy. Only candidates come from it; the reference re-checks each on the real model."""
    if model_float_dtype(model) != torch.float64:
        return model
    return copy.deepcopy(model).float().eval()


def _in_box(x: torch.Tensor, case: SpecCase) -> bool:
    xd = x.detach().cpu().double()
    return bool(((xd >= case.lower) & (xd <= case.upper)).all())


def relu_bab(chain, lo, hi, C, d, inter, deadline: float | None, bounds: str, **kw) -> BabOutcome:
    """ReLU branch and bound with the sub-problem bounds `bounds` says (see `verify_property`); in
    "auto", a reuse phase that runs out of time hands over to a fresh refresh search. `chain`: the
    network as bab_refute takes it (a chain, a graph or its certify/bab_network.py adapter)."""
    if bounds != "auto" or deadline is None:
        return bab_refute(chain, lo, hi, C, d, inter, deadline=deadline, refresh=bounds != "reuse", **kw)
    first = bab_refute(chain, lo, hi, C, d, inter, refresh=False, **kw,
                       deadline=time.monotonic() + REUSE_SHARE * max(0.0, deadline - time.monotonic()))
    if first.reason != "timeout":
        return first
    second = bab_refute(chain, lo, hi, C, d, inter, deadline=deadline, refresh=True, **kw)
    second.domains += first.domains
    return second


def _all_finite(bounds) -> bool:
    """Whether every tensor in `bounds` (tensors in lists, tuples and dicts, as the engines return
    intermediate bounds) is finite."""
    if isinstance(bounds, torch.Tensor):
        return bool(torch.isfinite(bounds).all())
    if isinstance(bounds, dict):
        return all(_all_finite(v) for v in bounds.values())
    if isinstance(bounds, (list, tuple)):
        return all(_all_finite(v) for v in bounds)
    return True


def _check_box_range(prop: VnnlibProperty, dtype: torch.dtype) -> None:
    """InputError for an input bound beyond the largest finite number of the model's precision: such an
    input cannot be fed to the network, and the stages would bound it as +-inf (inf - inf = NaN)."""
    big = torch.finfo(dtype).max
    for case in prop.cases:
        out = ((case.lower.abs() > big) | (case.upper.abs() > big)).nonzero().flatten()
        if len(out):
            i = int(out[0])
            raise InputError(f"{prop.source}: input X_{i} ranges over [{float(case.lower[i])!r}, {float(case.upper[i])!r}], "
                             f"beyond the largest {str(dtype).removeprefix('torch.')} number ({big:.4g}) the network "
                             "computes with; bound the inputs within it")


def verify_property(
    model: nn.Module,
    prop: VnnlibProperty,
    input_shape: tuple[int, ...],
    *,
    methods: tuple[str, ...] = METHODS,
    timeout: float | None = None,
    seed: int = 0,
    reference: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reference_name: str = "onnxruntime",
    attack_steps: int = 50,
    attack_restarts: int = 10,
    alpha_iterations: int = 20,
    on_stage: Callable[[str], None] | None = None,
    bab_split: str = "auto",
    input_split_max_dim: int = 16,
    bab_bounds: str = "auto",
    search_steps: int = 20,
) -> SpecResult:
    """Run `methods` in order until the property is decided or `timeout` seconds have passed.

    `model` is what the bound stages bound, in its own precision: a float64 model (an ONNX file of
    float64 weights converted with `onnx_to_torch(path, dtype=None)`) is bounded with its float64
    weights by every bound stage, never rounded to float32; the attacks run on a float32 copy
    (`attack_copy`) and only propose candidates.
    `reference(x)` maps flat inputs (B, n_inputs) to outputs (B, n_outputs); it re-checks
    counterexamples (default: the model itself, in its own precision).
    `bab_split`: what branch and bound splits: "input" (the input box; certify/input_bab.py),
    "relu" (ReLU phases; certify/bab.py) or "auto" (input for at most `input_split_max_dim` inputs).
    `bab_bounds`: the intermediate bounds of ReLU branch and bound's sub-problems: "reuse" the
    parent's (cheap domains: thousands per second on a 256-wide MLP), "refresh" them by CROWN per
    sub-problem (tight domains, tens per second), or "auto": reuse for the first `REUSE_SHARE` of
    its time, then start again with refresh. Reuse wins where a split changes little downstream
    (shallow networks, mostly stable later layers); refresh wins where later layers are loose and a
    split tightens them (deep networks at large eps). `search_steps`: steps of the counterexample
    search that ReLU branch and bound runs from its worst domains between rounds.
    """
    if bab_split not in BAB_SPLITS:
        raise ValueError(f"unknown bab_split {bab_split!r}; expected one of {BAB_SPLITS}")
    if bab_bounds not in BAB_BOUNDS:
        raise ValueError(f"unknown bab_bounds {bab_bounds!r}; expected one of {BAB_BOUNDS}")
    start = time.monotonic()
    deadline = start + timeout if timeout is not None else None
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = model_float_dtype(model)
    _check_box_range(prop, dtype)
    attacked = attack_copy(model)
    # The bound stages bound `bounded`: the logits of a model with a final (log-)softmax, whose rows
    # `heads` maps (certify/softmax_head.py); attacks, searches and confirmations use the model itself.
    first_box = (prop.cases[0].lower, prop.cases[0].upper) if prop.cases else None
    bounded, head = logits_and_head(model, input_shape, device, first_box)
    heads: dict[int, SpecRows] = {}

    def rows_of(ci: int, case: SpecCase) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """(C, d) the stages bound on `bounded` for case ci, and the map of their bounds to the case's rows."""
        C, d, _ = case.stacked()
        if head is None or len(d) == 0:
            return C, d, lambda low: low
        if ci not in heads:
            heads[ci] = SpecRows(head, C, d)
        h = heads[ci]
        return h.logit_C, h.logit_d, h.certificates
    if reference is None:
        reference_name = "torch"

        def reference(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return model.eval()(x.to(device, dtype).reshape(len(x), *input_shape)).reshape(len(x), -1).double().cpu()

    stages: list[dict] = []
    stopped_for_time = [False]

    def done(status: str, method: str | None, **kw) -> SpecResult:
        return SpecResult(status, method, time.monotonic() - start, stages=stages, **kw)

    def out_of_time() -> bool:
        return deadline is not None and time.monotonic() > deadline

    if not prop.cases:
        return done("holds", "parse")  # no input satisfies the input constraints
    g = torch.Generator().manual_seed(seed)
    proved = [torch.zeros(len(c.disjuncts), dtype=torch.bool) for c in prop.cases]
    chains: dict[int, cb.Chain | None] = {}
    natives: dict[int, nn.Module | None] = {}  # the float64 tree native IBP walks, for graph models
    dags: dict[int, db.Dag | None] = {}  # the float64 graph native CROWN bounds
    forms: dict[int, mf.TwoForms | None] = {}  # its two max pooling relaxations (None: no max pooling)
    not_chain = ""
    bounds: dict[tuple[int, str], list] = {}

    def confirmed(cands: torch.Tensor, case: SpecCase) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The first of the best three candidates the reference runtime confirms: (x, its outputs)."""
        for x in cands[:3]:
            y = reference(x[None].cpu())
            if _in_box(x, case) and bool(case.violated_by(y).all()):
                return x, y
        return None

    def attack(steps: int, restarts: int, until: float | None) -> tuple[SpecResult | None, str]:
        note = ""
        for case in prop.cases:
            cands = spec_pgd(attacked, case, input_shape, steps=steps, restarts=restarts, generator=g, deadline=until)
            if (hit := confirmed(cands, case)) is not None:
                stages.append({"method": method, "seconds": time.monotonic() - t0, "note": "counterexample"})
                return done("violated", method, counterexample=hit[0].detach().cpu(), outputs=hit[1][0],
                            confirmed_by=reference_name), ""
            if len(cands):
                note = f"{len(cands)} candidate(s) not confirmed by {reference_name}"
        return None, note

    try:
        for method in methods:
            if out_of_time():
                return done("timeout", None)
            if on_stage is not None:
                on_stage(method)
            t0 = time.monotonic()
            note = ""
            if method == "attack":
                # The first attack leaves the bound stages most of the time (on a large CNN its
                # restarts alone can fill any budget); the bab stage attacks again, longer.
                later = deadline is not None and methods.index(method) < len(methods) - 1
                until = t0 + ATTACK_SHARE * (deadline - t0) if later else deadline
                found, note = attack(attack_steps, attack_restarts, until)
                if found is not None:
                    return found
                stages.append({"method": method, "seconds": time.monotonic() - t0, "note": note or "none found"})
                continue
            split_inputs = bab_split == "input" or (bab_split == "auto" and prop.n_inputs <= input_split_max_dim)
            if method == "bab" and not split_inputs:  # input splitting searches for counterexamples itself
                until = t0 + (deadline - t0) / 4 if deadline is not None else None
                found, note = attack(2 * attack_steps, 5 * attack_restarts, until)
                if found is not None:
                    return found
            if method not in METHODS:
                raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
            for ci, case in enumerate(prop.cases):
                if bool(proved[ci].all()):
                    continue
                if not chains:  # one float64 copy of the model serves every case
                    try:
                        chains[0] = spec_chain(bounded, input_shape, device)
                    except cb.NotAChain as e:
                        chains[0] = None
                        not_chain = str(e)
                chain = chains[0]
                if chain is None and method == "bab":  # a graph model: branch and bound on the native graph
                    if 0 not in dags:
                        dags[0] = _native_dag(bounded, input_shape, device)
                    if dags[0] is None:
                        note = f"branch and bound needs a chain or a ReLU graph the native engine bounds ({not_chain})"
                        break
                elif chain is None:  # a graph model: native CROWN or auto_LiRPA bounds it if it can
                    C, d, view = rows_of(ci, case)
                    if method in ("crown", "alpha-crown"):
                        if 0 not in dags:
                            dags[0] = _native_dag(bounded, input_shape, device)
                        if (dag := dags[0]) is not None:
                            if 0 not in forms:
                                forms[0] = mf.TwoForms.of(dag)
                            lower = _native_dag_box_lower(dag, case, input_shape, C, d, method, bounds, ci,
                                                          alpha_iterations, t0, deadline, "bab" in methods, forms[0],
                                                          view)
                            note = "native CROWN (graph model)"
                            proved[ci] |= refuted(view(lower), case)[0].cpu()
                            if out_of_time():
                                break
                            continue
                    if method == "ibp":
                        if 0 not in natives:
                            natives[0] = _native_ibp_model(bounded, input_shape, device)
                        if natives[0] is not None:  # native IBP walks graphs the chain engine does not
                            lower = _native_ibp_box_lower(natives[0], case, input_shape, C, d)
                            note = "native IBP (graph model)"
                            proved[ci] |= refuted(view(lower), case)[0].cpu()
                            continue
                    try:
                        lower = lirpa_box_lower(bounded, case.lower.reshape(1, *input_shape).to(device),
                                                case.upper.reshape(1, *input_shape).to(device), C.to(device),
                                                d.to(device), method, alpha_iterations=alpha_iterations)
                    except InputError as e:
                        note = f"{not_chain}; {e}"
                        break
                    note = "auto_LiRPA (graph model)"
                    proved[ci] |= refuted(view(lower), case)[0].cpu()
                    continue
                engine = chain if chain is not None else dags[0]  # graph models reach here for `bab` only
                C, d, view = rows_of(ci, case)
                C, d = C.to(engine.device, engine.dtype), d.to(engine.device, engine.dtype)
                lo = case.lower.to(engine.device, engine.dtype).reshape(1, *input_shape)
                hi = case.upper.to(engine.device, engine.dtype).reshape(1, *input_shape)
                with torch.no_grad():
                    if method == "bab":
                        if chain is not None:
                            inter = bounds.get((ci, "alpha")) or bounds.get((ci, "crown"))
                            if inter is None:
                                inter = bounds[(ci, "crown")] = cb.crown_intermediate(chain, lo, hi, deadline=deadline)
                        elif not split_inputs and any(n.kind == "maxpool" for n in engine.nodes):
                            # ReLU splits on max pooling: its ReLU form, whose every step can be split
                            # (certify/maxpool_relus.py), from alpha-CROWN's intervals of both
                            # relaxations (certify/maxpool_forms.py)
                            if 0 not in forms:
                                forms[0] = mf.TwoForms.of(engine)
                            engine = forms[0].relu
                            inter = _relu_form_roots(forms[0], lo, hi, C, d, bounds, ci, alpha_iterations, t0, deadline)
                        else:
                            inter = bounds.get((ci, "dag-alpha")) or bounds.get((ci, "dag-crown"))
                            if inter is None:
                                inter = bounds[(ci, "dag-crown")] = db.crown_intermediate(engine, lo, hi, deadline=deadline)
                        if not _all_finite(inter):
                            # overflowed intermediate bounds (huge weights or box): a split of an inf or NaN
                            # interval proves nothing, and its LPs and emptiness tests would read as proofs
                            note = "intermediate bounds are not finite (float overflow); nothing to branch on"
                            break
                        net = as_bab_network(engine)
                        _, _, rows = case.stacked()
                        open_ = [j for j in range(len(rows)) if not bool(proved[ci][j])]
                        if ci in heads:
                            # rows over a (log-)softmax: branch on the ones the logits answer exactly
                            # (SpecRows.direct); refuting one row of a disjunct refutes it
                            parts = [tuple(t.to(C.device, C.dtype) for t in heads[ci].direct_rows(rows[j])) for j in open_]
                            if any(len(dj) == 0 and rows[j].stop > rows[j].start for (_, dj), j in zip(parts, open_)):
                                note = (f"branch and bound splits only margin rows (Y_i - Y_j) of a {head} output; "
                                        "a disjunct with only other rows stays open")
                                break
                        else:
                            parts = [(C[rows[j]], d[rows[j]]) for j in open_]
                        R = max(len(dj) for _, dj in parts)
                        if R == 0 or not net.slots:
                            # no output condition (any input violates), or no ReLU (CROWN is exact)
                            note = "nothing to branch on"
                            break
                        Cb = torch.zeros(len(open_), R, C.shape[1], dtype=C.dtype, device=C.device)
                        d_pad = torch.full((len(open_), R), -1.0, dtype=d.dtype, device=d.device)  # padding rows never > 0
                        for k, (Cj, dj) in enumerate(parts):
                            Cb[k, : len(dj)], d_pad[k, : len(dj)] = Cj, dj
                        def check(x: torch.Tensor, case=case) -> torch.Tensor:
                            with torch.no_grad():
                                y = model(x.to(device, dtype).reshape(len(x), *input_shape))
                            return case.violated_by(y.reshape(len(x), -1).double().cpu()).to(x.device)

                        def search(starts: torch.Tensor, case=case) -> torch.Tensor | None:
                            cands = spec_pgd(attacked, case, input_shape, steps=search_steps, generator=g,
                                             deadline=deadline, starts=starts.reshape(len(starts), *input_shape))
                            hit = confirmed(cands, case)
                            return None if hit is None else hit[0].to(engine.device, engine.dtype)

                        if split_inputs:
                            outcome = input_bab_refute(net, lo, hi, Cb, d_pad, check=check, deadline=deadline)
                        else:
                            outcome = relu_bab(net, lo, hi, Cb, d_pad, inter, deadline, bab_bounds, check=check,
                                               search=search)
                        if outcome.counterexample is not None:
                            # float32 nearest to the float64 point, moved into the box where rounding left it
                            # (a box narrower than float32's spacing at its magnitude)
                            lo32, hi32 = float32_box(case.lower, case.upper)
                            x = torch.minimum(torch.maximum(outcome.counterexample.float().cpu(), lo32), hi32)
                            y = reference(x[None].cpu())
                            if _in_box(x, case) and bool(case.violated_by(y).all()):
                                stages.append({"method": method, "seconds": time.monotonic() - t0,
                                               "note": f"{outcome.domains} domains: counterexample"})
                                return done("violated", method, counterexample=x.detach().cpu(), outputs=y[0],
                                            confirmed_by=reference_name)
                            note = f"branch and bound: a candidate not confirmed by {reference_name}"
                            continue  # another case of the property may still have a counterexample
                        if outcome.reason == "timeout":  # it stops short of the deadline when a round would overrun it
                            stopped_for_time[0] = True
                        if outcome.proved:
                            proved[ci][:] = True
                        kind = "boxes (input split)" if split_inputs else "domains (ReLU split)"
                        note = f"{outcome.domains} {kind}" + ("" if outcome.proved else f", {outcome.reason}")
                        if not outcome.proved:
                            break  # an open case keeps the property open
                        continue
                    if method == "ibp":
                        lower = cb.ibp_spec(chain, lo, hi, C, d)
                    elif method == "crown":
                        lower, bounds[(ci, "crown")] = cb.crown_spec(chain, lo, hi, C, d, bounds.get((ci, "crown")),
                                                                  deadline=deadline)
                    else:
                        inter = bounds.get((ci, "crown"))
                        if inter is None:
                            inter = bounds[(ci, "crown")] = cb.crown_intermediate(chain, lo, hi, deadline=deadline)
                        tight: list = []
                        # At most 40% of the remaining time, so branch and bound keeps some.
                        until = t0 + 0.4 * (deadline - t0) if deadline is not None and "bab" in methods else deadline
                        lower = cb.alpha_crown_spec(chain, lo, hi, C, d, inter, iterations=alpha_iterations,
                                                    deadline=until, tightened_out=tight)
                        bounds[(ci, "alpha")] = tight
                proved[ci] |= refuted(view(lower), case)[0].cpu()
                if out_of_time():
                    break
            total = sum(len(p_) for p_ in proved)
            n_proved = int(sum(int(p_.sum()) for p_ in proved))
            stages.append({"method": method, "seconds": time.monotonic() - t0, "refuted": n_proved, "total": total,
                           **({"note": note} if note else {})})
            if all(bool(p_.all()) for p_ in proved):
                return done("holds", method)
    except DeadlineReached:  # a bound computation stopped at the deadline: no answer in time
        stages.append({"method": method, "seconds": time.monotonic() - t0, "note": "stopped at the deadline"})
        return done("timeout", None)
    return done("timeout" if out_of_time() or stopped_for_time[0] else "unknown", None)
