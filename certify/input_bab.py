"""Branch and bound on the input box, for networks with few inputs (e.g. 5-input control networks).

With a handful of input dimensions, splitting the input box shrinks every neuron's bounds at once,
so a few halvings make CROWN nearly exact; splitting ReLUs there needs thousands of domains for
the same effect (alpha-beta-CROWN's input BaB; Wang et al. 2021, sec. 4; the ACAS Xu setting).

A domain is (root disjunct, sub-box). Each round bounds up to `batch` of the worst domains at
once with CROWN (intermediate bounds recomputed per sub-box: they are the point of splitting) and
- refutes a domain when some row of its disjunct has a lower bound > 0;
- looks for a counterexample in each open domain: the sub-box's centre and the corner that
  minimises the linear lower bound of the row closest to refuting it (where CROWN thinks a
  violation would be), checked with `check` (the real model, float32) before it counts;
- splits each open domain at the midpoint of the input dimension with the largest estimated gain
  |a_i| (u_i - l_i), a_i the CROWN coefficient of input i in that row's linear bound (the part of
  the bound's looseness that dimension's width accounts for; the "smart branching" score of input
  BaB in alpha-beta-CROWN).
Every bound is sound for its sub-box and the sub-boxes of a root cover it, so the property holds
once no domain is open. The network is a ReLU chain or a ReLU graph (residual adds, concatenations,
max pooling), bounded through certify/bab_network.py with the graph engine's CROWN per sub-box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from robustcli.certify import chain_bounds as cb
from robustcli.certify import dag_bounds as db
from robustcli.certify.bab import RoundClock
from robustcli.certify.domain_pool import DomainPool
from robustcli.certify.bab_network import BabNetwork, as_bab_network
from robustcli.certify.deadline import DeadlineReached


@dataclass
class InputBabOutcome:
    proved: bool
    domains: int  # sub-boxes bounded
    reason: str  # proved | counterexample | timeout | limit | precision
    counterexample: torch.Tensor | None = None  # (n_inputs,) a point the check confirmed


def input_bab_refute(
    network: cb.Chain | db.Dag | BabNetwork,
    lo: torch.Tensor,
    hi: torch.Tensor,
    C: torch.Tensor,
    d: torch.Tensor,
    *,
    check: Callable[[torch.Tensor], torch.Tensor] | None = None,
    deadline: float | None = None,
    batch: int = 512,
    max_domains: int = 2_000_000,
    min_width: float = 1e-7,
) -> InputBabOutcome:
    """Prove that for every root j some row of C[j] z_L + d[j] is > 0 on the whole box, by splitting it.

    lo, hi (1, *input_shape); C (D, R, n_out), d (D, R) (pad short disjuncts with C = 0, d = -1).
    `check(x)` (B, n_inputs) -> bool (B,): does the real model violate the property at x.
    `network`: the chain, the graph, or an adapter (certify/bab_network.py).
    """
    net = as_bab_network(network)
    dev, dt = net.device, net.dtype
    D, R = C.shape[0], C.shape[1]
    shape = tuple(lo.shape[1:])
    A_roots = C.reshape(D, R, *net.out_shape)
    box_lo = lo.reshape(1, -1).expand(D, -1).clone()
    box_hi = hi.reshape(1, -1).expand(D, -1).clone()
    roots = torch.arange(D, device=dev)
    score = torch.full((D,), float("-inf"), dtype=dt, device=dev)
    pool = DomainPool([score, roots, box_lo, box_hi], score=0)
    done = 0
    rounds = RoundClock(deadline)
    while len(pool):
        stop = rounds.stop_reason(done, max_domains)
        if stop is not None:
            return InputBabOutcome(False, done, stop)
        _, rt, blo, bhi = pool.pop_worst(batch)
        B = len(rt)
        lo_b, hi_b = blo.reshape(B, *shape), bhi.reshape(B, *shape)
        with torch.no_grad():
            try:
                inter = net.intermediate(lo_b, hi_b, deadline=deadline)
            except DeadlineReached:  # a large network's bounds reached the deadline mid-round
                return InputBabOutcome(False, done, "timeout")
            rec: dict[int, torch.Tensor] = {}
            low = net.lower(A_roots[rt], lo_b, hi_b, inter, record=rec) + d[rt]
        done += B
        top, row = low.max(1)  # refuted if any row of the disjunct is > 0; `row` is the closest to it
        open_ = ~(top > 0)  # NaN (overflowed arithmetic) leaves a domain open, never refuted
        if not bool(open_.any()):
            continue
        idx = open_.nonzero().flatten()
        a_in = rec[-1][idx, row[idx]]  # (n_open, n_inputs): input coefficients of that row's linear bound
        olo, ohi = blo[idx], bhi[idx]
        if check is not None:
            corner = torch.where(a_in > 0, olo, ohi)  # minimises the row's linear lower bound
            cands = torch.cat([(olo + ohi) / 2, corner])
            hit = check(cands)
            if bool(hit.any()):
                return InputBabOutcome(False, done, "counterexample", cands[hit.nonzero()[0, 0]].detach().cpu())
        width = ohi - olo
        gain = a_in.abs() * width
        gain = torch.where(width > min_width, gain + 1e-12 * width, torch.full_like(gain, -1.0))
        best, dim = gain.max(1)
        if bool((best < 0).any()):
            return InputBabOutcome(False, done, "precision")
        mid = ((olo + ohi) / 2).gather(1, dim[:, None])
        left_hi = ohi.scatter(1, dim[:, None], mid)
        right_lo = olo.scatter(1, dim[:, None], mid)
        pool.push([torch.cat([top[idx], top[idx]]), torch.cat([rt[idx], rt[idx]]), torch.cat([olo, right_lo]),
                   torch.cat([left_hi, ohi])])
    return InputBabOutcome(True, done, "proved")
