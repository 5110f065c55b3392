"""What branch and bound needs from a bound engine, for ReLU chains and for ReLU graphs.

Branch and bound (certify/bab.py, certify/input_bab.py) is one loop over domains; the network it
splits is seen through `BabNetwork`, whose two implementations wrap the chain engine
(certify/chain_bounds.py) and the graph engine (certify/dag_bounds.py). The loop keeps, per
domain, the *carried* intervals (everything the engine's relaxations read: every ReLU's input,
and on a graph also every max pooling's input) as a list of flat (B, n) tensors, and per *split
layer* (a quantity feeding ReLUs, `slots` gives its position among the carried ones) the split
signs, the lower slopes alpha and the beta multipliers. On a chain both lists are the ReLU
inputs z_0 .. z_{L-1}; on a graph the split layers are the nodes feeding ReLUs (a node read by
several ReLUs is split once: the split is on its value, and those ReLUs share its slopes, which
is sound for any slopes in [0, 1]) and max pooling inputs are carried but never split.

A domain without unstable ReLUs is decided exactly by a linear program (bab.close_domain) when
the network is affine on it: always on a chain, and on a graph when every max pooling window is
decided by its bounds (one input's lower bound above every other's upper bound; DeepPoly's exact
case, Singh et al. 2019 sec. 4) and every other activation (sigmoid, GELU, leaky ReLU, ...:
certify/activation_lines.py) is on one linear piece of a piecewise linear function; a smooth
activation's lines are never exact, so such a domain is never closed as affine (its bound stays
CROWN's, sound). `affine_rows` gives those affine functions, from a backward pass whose
relaxations are all exact there. Only ReLUs are split.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from robustcli.certify import chain_bounds as cb
from robustcli.certify import dag_bounds as db
from robustcli.certify.activation_lines import exact_on

Interval = tuple[torch.Tensor, torch.Tensor]


class BabNetwork(Protocol):
    """The bound engine as branch and bound uses it (one implementation per engine)."""

    dtype: torch.dtype
    device: torch.device
    out_shape: tuple[int, ...]  # per-point shape of the network's output
    in_shape: tuple[int, ...]  # per-point shape of the input
    slots: list[int]  # position among the carried intervals of each split layer

    def carried(self, bounds) -> list[Interval]:
        """The engine's intermediate bounds (as its crown_intermediate returns them) as the carried list."""

    def intermediate(self, lo: torch.Tensor, hi: torch.Tensor, base: list[Interval] | None = None,
                     splits: list[torch.Tensor] | None = None, deadline: float | None = None,
                     settled: torch.Tensor | None = None) -> list[Interval]:
        """CROWN intervals of the carried quantities (flat (B, n)) over the box(es) lo, hi, each
        intersected with `base` (flat, per domain) and with the split neurons (`splits[j]` (B, n_j)
        int8, per split layer) clamped before any later quantity is bounded. `settled` (B,): per
        domain, the last split layer up to which `base` already holds the sub-problem's intervals
        (an engine may skip recomputing them). Past `deadline` it raises DeadlineReached
        (certify/deadline.py)."""

    def clamp(self, base: list[Interval], splits: list[torch.Tensor]) -> list[Interval]:
        """`base` with the split neurons clamped (l = max(l, 0) active, u = min(u, 0) inactive)."""

    def lower(self, A: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bounds: list[Interval],
              alphas: list[torch.Tensor] | None = None, split_terms: list[torch.Tensor] | None = None,
              record: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Lower bound (B, R) of A . f(x) (A (B, R, *out_shape)) with the lower slopes `alphas[j]`
        (B, R, n_j) and beta terms `split_terms[j]` (B, R, n_j) per split layer; `record[j]`
        receives the coefficients of split layer j's ReLU output, `record[-1]` the input's."""

    def closable(self, bounds: list[Interval]) -> bool:
        """Is the network affine on a domain with these (single-domain, flat (n,)) intervals once no
        ReLU is unstable?"""

    def affine_rows(self, target: int | None, rows: torch.Tensor, bounds: list[Interval],
                    splits: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """Rows (R, n) of split layer `target` (None: of the output) as affine functions of the input
        on a closable domain: (R, n_inputs) coefficients and (R,) constants."""


class ChainNetwork:
    """A ReLU chain: the carried intervals and the split layers are the ReLU inputs z_0 .. z_{L-1}."""

    def __init__(self, chain: cb.Chain):
        self.chain = chain
        self.dtype, self.device = chain.dtype, chain.device
        self.out_shape, self.in_shape = chain.out_shapes[-1], chain.in_shapes[0]
        self.slots = list(range(len(chain.blocks) - 1))

    def carried(self, bounds) -> list[Interval]:
        return list(bounds)

    def intermediate(self, lo, hi, base=None, splits=None, deadline=None, settled=None) -> list[Interval]:
        return cb.crown_intermediate(self.chain, lo, hi, base=base, splits=splits, deadline=deadline, settled=settled)

    def clamp(self, base, splits) -> list[Interval]:
        return [cb.clamp_split(l, u, s) for (l, u), s in zip(base, splits)]

    def lower(self, A, lo, hi, bounds, alphas=None, split_terms=None, record=None) -> torch.Tensor:
        return cb.backward_lower(self.chain, len(self.chain.blocks) - 1, A, lo, hi, bounds, alphas, split_terms, record)

    def closable(self, bounds) -> bool:
        return True  # affine layers and ReLUs only: stable ReLUs leave an affine map

    def affine_rows(self, target, rows, bounds, splits) -> tuple[np.ndarray, np.ndarray]:
        active = [(l.flatten() >= 0) | (s.flatten() > 0) for (l, _), s in zip(bounds, splits)]
        upto = len(self.slots) if target is None else target
        shape = self.chain.out_shapes[upto]
        return _chain_affine_rows(self.chain, upto, rows.reshape(rows.shape[0], *shape), active)


def _chain_affine_rows(chain: cb.Chain, upto: int, A: torch.Tensor, active: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Rows A (R, *shape of z_upto) as affine functions of the input when every ReLU j < upto has the
    fixed phase `active[j]` (n_j,) bool: returns (R, n_in) coefficients and (R,) constants."""
    bias = torch.zeros(A.shape[0], dtype=A.dtype, device=A.device)
    for j in range(upto, -1, -1):
        aw, b = cb.back_affine(chain.blocks[j], chain.in_shapes[j], A.reshape(A.shape[0], *chain.out_shapes[j]))
        bias = bias + b
        A = aw.reshape(A.shape[0], -1)
        if j > 0:
            A = A * active[j - 1].to(A.dtype)
    return A.cpu().numpy(), bias.cpu().numpy()


class DagNetwork:
    """A ReLU graph (residual adds, concatenations, max pooling): carried are the nodes feeding a
    ReLU or a max pooling (`Dag.pre`), split layers the nodes feeding a ReLU (`Dag.relu_inputs`)."""

    def __init__(self, dag: db.Dag):
        self.dag = dag
        self.dtype, self.device = dag.dtype, dag.device
        self.out_shape, self.in_shape = dag.nodes[dag.output].shape, dag.nodes[0].shape
        self.keys = dag.pre
        self.split_nodes = dag.relu_inputs
        self.slots = [self.keys.index(q) for q in self.split_nodes]
        # the ReLU nodes each split layer feeds: they take that layer's slopes
        self.relus_of = {q: [r for r in dag.relus if dag.nodes[r].parents[0] == q] for q in self.split_nodes}

    def _dict(self, bounds: list[Interval]) -> dict[int, Interval]:
        return dict(zip(self.keys, bounds))

    def _shaped(self, bounds: list[Interval]) -> dict[int, Interval]:
        out = {}
        for q, (l, u) in zip(self.keys, bounds):
            shape = self.dag.nodes[q].shape
            out[q] = (l.reshape(l.shape[0], *shape), u.reshape(u.shape[0], *shape))
        return out

    def carried(self, bounds) -> list[Interval]:
        return [bounds[q] for q in self.keys]

    def intermediate(self, lo, hi, base=None, splits=None, deadline=None, settled=None) -> list[Interval]:
        sp = None if splits is None else dict(zip(self.split_nodes, splits))
        newest = None
        if settled is not None:  # split layer -> its node; a root (settled past the last layer) has none
            nodes = torch.tensor(self.split_nodes + [-1], device=settled.device)
            newest = nodes[settled.clamp(max=len(self.split_nodes))]
        out = db.crown_intermediate(self.dag, lo, hi, base=None if base is None else self._shaped(base), splits=sp,
                                    deadline=deadline, newest_split=newest)
        return self.carried(out)

    def clamp(self, base, splits) -> list[Interval]:
        sp = dict(zip(self.split_nodes, splits))
        out = self._dict(base)
        for q in self.keys:
            if q in sp:
                out[q] = db._clamp_split(out[q], sp[q])
            elif self.dag.nodes[q].kind == "relu" and self.dag.nodes[q].parents[0] in out:
                # a ReLU's output feeding a max pooling follows its (clamped) input
                pl, pu = out[self.dag.nodes[q].parents[0]]
                l, u = out[q]
                out[q] = (torch.maximum(l, pl.clamp(min=0)), torch.minimum(u, pu.clamp(min=0)))
        return self.carried(out)

    def _per_relu(self, per_layer: list[torch.Tensor] | None) -> dict[int, torch.Tensor] | None:
        if per_layer is None:
            return None
        return {r: t for q, t in zip(self.split_nodes, per_layer) for r in self.relus_of[q]}

    def lower(self, A, lo, hi, bounds, alphas=None, split_terms=None, record=None) -> torch.Tensor:
        rec: dict[int, torch.Tensor] | None = {} if record is not None else None
        terms = None if split_terms is None else dict(zip(self.split_nodes, split_terms))
        low = db.backward_lower(self.dag, self.dag.output, A, lo, hi, self._dict(bounds), self._per_relu(alphas),
                                split_terms=terms, record=rec)
        if record is not None:
            B, R = A.shape[:2]
            for j, q in enumerate(self.split_nodes):
                # a split layer the output does not reach through a ReLU gets no coefficients: zero
                record[j] = rec.get(q, torch.zeros(B, R, self.dag.nodes[q].numel, dtype=self.dtype, device=self.device))
            record[-1] = rec[-1]
        return low

    def closable(self, bounds) -> bool:
        for i, n in enumerate(self.dag.nodes):
            if n.kind == "maxpool":
                l, u = (t.reshape(1, -1) for t in self._dict(bounds)[n.parents[0]])
                if not bool(db._maxpool_lines(n.window, l, u)[1].all()):
                    return False  # an undecided window: the max is not affine on the domain
            elif n.kind == "act":
                bl, bu = self._dict(bounds)[n.parents[0]]
                if not bool(exact_on(db._activation(n), bl.reshape(-1), bu.reshape(-1)).all()):
                    return False  # a smooth activation, or a kink inside the interval: not affine
        return True

    def affine_rows(self, target, rows, bounds, splits) -> tuple[np.ndarray, np.ndarray]:
        node = self.dag.output if target is None else self.split_nodes[target]
        clamped = self.clamp([(l.reshape(1, -1), u.reshape(1, -1)) for l, u in bounds],
                             [s.reshape(1, -1) for s in splits])
        a, bias = db.back_to_input(self.dag, node, rows.reshape(1, rows.shape[0], -1), self._dict(clamped))
        if a is None:
            a = torch.zeros(1, rows.shape[0], self.dag.nodes[0].numel, dtype=self.dtype, device=self.device)
        return a[0].cpu().numpy(), bias[0].cpu().numpy()


def as_bab_network(net) -> BabNetwork:
    """`net` as branch and bound sees it: a Chain or Dag is wrapped, an adapter passes through."""
    if isinstance(net, cb.Chain):
        return ChainNetwork(net)
    if isinstance(net, db.Dag):
        return DagNetwork(net)
    return net
