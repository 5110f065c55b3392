"""Branch and bound on ReLU splits with beta-CROWN bounds (Wang et al. 2021, "Beta-CROWN").

A domain fixes some unstable ReLUs to active (z >= 0) or inactive (z <= 0). Each round takes a
batch of the worst domains and, for all of them at once:
- refreshes the intermediate bounds of the sub-problem: CROWN bounds of every ReLU's input with
  the split neurons clamped (l = max(l, 0) if active, u = min(u, 0) if inactive) before the next
  layer is bounded, intersected with the parent's bounds (alpha-beta-CROWN recomputes them per
  sub-problem too; a split in layer 1 typically stabilises neurons in layers 2..L);
- bounds the specification with beta-CROWN: each split constraint s_k z_k >= 0 enters with a
  Lagrange multiplier beta_k >= 0 (eq. 7: the term -beta_k s_k z_k is added to the objective),
  optimised with the lower slopes alpha of the remaining unstable ReLUs by projected Adam;
  any alpha in [0, 1] and beta >= 0 give a sound bound, so a domain whose bound is > 0 holds;
- drops a domain whose refreshed bounds cross (l > u at some neuron): its splits contradict each
  other on the box, so it holds no input;
- closes a domain without unstable ReLUs exactly: the network is affine on it, so one linear
  program (scipy's HiGHS) over box + split constraints decides it: optimum > 0 refutes it, else
  its minimiser is a counterexample (re-checked on the model by the caller);
- branches on the neuron chosen by filtered smart branching (FSB, De Palma et al. 2021): the
  top-k candidates by the BaBSR score |min(A, 0)| (-l u / (u - l)) (Bunel et al. 2020), each
  re-scored by the bound its two children get from one CROWN pass with the neuron fixed (the
  better of the two children's worse bound), the best taken.
The property holds once every domain is refuted.

The loop is the same for ReLU chains and ReLU graphs (residual adds, concatenations, max pooling):
it sees the network through certify/bab_network.py, which says which intervals a domain carries
(every ReLU's input; on a graph also every max pooling's input, never split), which of them are
split layers, and how to bound, refresh, clamp and close. A graph domain with an undecided max
pooling window is not affine once its ReLUs are fixed, so it cannot be closed: the search then
ends as `exhausted` (no answer), never as proved (the verifier hands ReLU splits the pooling's
ReLU form instead, certify/maxpool_relus.py, where every step is a ReLU to split).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from robustcli.certify.domain_pool import DomainPool
from robustcli.certify.bab_network import BabNetwork, as_bab_network
from robustcli.certify.chain_bounds import Chain
from robustcli.certify.dag_bounds import Dag
from robustcli.certify.deadline import DeadlineReached


class RoundClock:
    """A branch-and-bound deadline by rounds: a round that cannot finish in time is not started,
    judging by the previous round's duration (the first round always starts)."""

    def __init__(self, deadline: float | None):
        self.deadline = deadline
        self._start: float | None = None

    def next_round_fits(self) -> bool:
        now = time.monotonic()
        last = now - self._start if self._start is not None else 0.0
        self._start = now
        return self.deadline is None or now + last <= self.deadline

    def stop_reason(self, done: int, max_domains: int) -> str | None:
        """Why a branch-and-bound loop stops before its next round ("timeout" if the round would not
        fit, "limit" once more than `max_domains` domains were bounded), or None to go on."""
        if not self.next_round_fits():
            return "timeout"
        if done > max_domains:
            return "limit"
        return None


@dataclass
class BabOutcome:
    proved: bool
    domains: int  # domains bounded
    reason: str  # proved | timeout | exhausted (a domain could not be decided) | limit | counterexample
    counterexample: torch.Tensor | None = None  # (n_inputs,) from a closed domain's linear program


def close_domain(net: BabNetwork, lo, hi, C, d, bounds, splits) -> tuple[bool | None, torch.Tensor | None]:
    """Decide a domain without unstable ReLUs by one LP: min_x max_r (C f(x) + d)_r over the box and
    the split constraints, the network being affine on the domain (`net.closable`). Returns
    (True, None) if refuted, (False, x) with a minimiser, or (None, None) if the LP failed, is too
    close to 0 to call, or the network is not affine on the domain (a graph's undecided max pooling)."""
    from scipy.optimize import linprog

    if not net.closable(bounds):
        return None, None
    A_ub, b_ub = [], []
    for j in range(len(splits)):
        idx = (splits[j].flatten() != 0).nonzero().flatten()
        if len(idx) == 0:
            continue
        n = splits[j].numel()
        rows = torch.zeros(len(idx), n, dtype=net.dtype, device=net.device)
        rows[torch.arange(len(idx)), idx] = 1.0
        a, b = net.affine_rows(j, rows, bounds, splits)
        sign = splits[j].flatten()[idx].cpu().numpy().astype(np.float64)  # +1: z >= 0 -> -z <= 0
        A_ub.append(-sign[:, None] * a)
        b_ub.append(sign * b)
    a_out, b_out = net.affine_rows(None, C.reshape(C.shape[0], -1), bounds, splits)
    b_out = b_out + d.cpu().numpy()
    n_in = a_out.shape[1]
    # variables (x, t): minimise t subject to a_r x + b_r <= t for every row r
    obj = np.zeros(n_in + 1)
    obj[-1] = 1.0
    A_rows = [np.hstack([a_out, -np.ones((len(b_out), 1))])]
    b_rows = [-b_out]
    for a, b in zip(A_ub, b_ub):
        A_rows.append(np.hstack([a, np.zeros((len(b), 1))]))
        b_rows.append(b)
    box = list(zip(lo.flatten().cpu().numpy(), hi.flatten().cpu().numpy())) + [(None, None)]
    res = linprog(obj, A_ub=np.vstack(A_rows), b_ub=np.concatenate(b_rows), bounds=box, method="highs")
    if res.status == 2:  # infeasible: the split constraints exclude the whole box
        return True, None
    if res.status != 0:
        return None, None
    t = float(res.x[-1])
    if t > 1e-7 * (1 + np.abs(b_out).max()):
        return True, None
    return False, torch.tensor(res.x[:-1], dtype=net.dtype).reshape(1, *net.in_shape)


def bab_refute(
    network: Chain | Dag | BabNetwork,
    lo: torch.Tensor,
    hi: torch.Tensor,
    C: torch.Tensor,
    d: torch.Tensor,
    bounds: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    deadline: float | None,
    batch: int = 64,
    iterations: int = 5,
    lr_alpha: float = 0.1,
    lr_beta: float = 0.05,
    max_domains: int = 200_000,
    fsb_candidates: int = 3,
    check=None,
    refresh: bool = True,
    search=None,
    search_share: float = 0.1,
    search_starts: int = 8,
) -> BabOutcome:
    """Try to prove, for every root j, that some row of C[j] z_L + d[j] is > 0 on the whole box.

    C (D, R, n_outputs), d (D, R): D disjuncts (roots) of up to R rows, searched together so that
    each round bounds one batch across all of them (pad short disjuncts with rows C = 0, d = -1).
    `network`: the chain, the graph, or an adapter (certify/bab_network.py).
    `bounds`: intermediate bounds of the whole box (the roots' starting point), as the network's
    crown_intermediate returns them (a list per ReLU for a chain, a dict per node for a graph).
    `check(x)` (1, n_inputs) -> bool: does the model violate the property at x (for LP minimisers).
    `search(starts)` (S, n_inputs) -> (n_inputs,) or None: a counterexample search from these starts
    (None: no search). Between rounds, while it has used less than `search_share` of the time, it
    runs from the input minimising the linear bound of each of the `search_starts` worst open
    domains (the relaxation's primal point: where the bound is weakest, the model often is too).
    `refresh`: recompute the intermediate bounds of each sub-problem (else the parent's, clamped
    at the split neurons, are kept: each domain costs about a twentieth as much).
    """
    net = as_bab_network(network)
    slots = net.slots
    L = len(slots)  # split layers (ReLU inputs); the carried intervals may hold more (max pooling inputs)
    D, R = C.shape[0], C.shape[1]
    flat = [(l.reshape(1, -1), u.reshape(1, -1)) for l, u in net.carried(bounds)]
    sizes = [flat[k][0].shape[1] for k in slots]
    A_roots = C.reshape(D, R, *net.out_shape)
    dev, dt = net.device, net.dtype
    # Domain queue: root index, split signs per split layer (int8), parent intervals per carried
    # quantity, alphas and betas per split layer.
    roots = torch.arange(D, device=dev)
    splits = [torch.zeros(D, n, dtype=torch.int8, device=dev) for n in sizes]
    lows = [f[0].expand(D, -1).clone() for f in flat]
    ups = [f[1].expand(D, -1).clone() for f in flat]
    alphas = [(flat[k][1] > -flat[k][0]).to(dt).reshape(1, 1, -1).expand(D, R, -1).clone() for k in slots]
    betas = [torch.zeros(D, R, n, dtype=dt, device=dev) for n in sizes]
    scores_lb = torch.full((D,), float("-inf"), dtype=dt, device=dev)
    F_ = len(flat)
    # Per domain, the last split layer whose carried intervals are already its sub-problem's (a
    # child's are its parent's refreshed ones up to the layer of its newest split); roots: all.
    settled = torch.full((D,), L, dtype=torch.long, device=dev)
    pool = DomainPool([scores_lb, roots, settled, *splits, *alphas, *betas, *lows, *ups], score=0)
    done = 0
    out_of_time = lambda: deadline is not None and time.monotonic() > deadline  # noqa: E731
    rounds = RoundClock(deadline)
    started, searched = time.monotonic(), 0.0
    while len(pool):
        stop = rounds.stop_reason(done, max_domains)
        if stop is not None:
            return BabOutcome(False, done, stop)
        inherited, rt, fresh, *rest = pool.pop_worst(batch)
        sp, al, be = rest[:L], rest[L : 2 * L], rest[2 * L : 3 * L]
        pl, pu = rest[3 * L : 3 * L + F_], rest[3 * L + F_ :]
        A0, d0 = A_roots[rt], d[rt]
        B = len(rt)
        with torch.no_grad():
            try:
                if refresh:
                    bnd = net.intermediate(lo, hi, base=list(zip(pl, pu)), splits=sp, deadline=deadline, settled=fresh)
                else:
                    bnd = net.clamp(list(zip(pl, pu)), sp)
            except DeadlineReached:  # a large network's refresh reached the deadline mid-round
                return BabOutcome(False, done, "timeout")
        bnd = [(l.reshape(B, -1), u.reshape(B, -1)) for l, u in bnd]
        # A lower bound above an upper bound: no input of the box meets these splits (the domain is empty).
        empty = torch.stack([(l > u + 1e-9 * (1 + u.abs())).any(1) for l, u in bnd]).any(0) if bnd else torch.zeros(B, dtype=torch.bool, device=dev)
        al = [a.clone().requires_grad_(True) for a in al]
        be = [b.clone().requires_grad_(True) for b in be]
        m1 = [torch.zeros_like(t) for t in al + be]
        m2 = [torch.zeros_like(t) for t in al + be]
        best = torch.full((B,), float("-inf"), dtype=dt, device=dev)
        best_al = [a.detach().clone() for a in al]
        best_be = [b.detach().clone() for b in be]
        record: dict[int, torch.Tensor] = {}
        for it in range(iterations):
            if out_of_time():
                return BabOutcome(False, done, "timeout")
            with torch.enable_grad():
                terms = [-b * s.to(dt).unsqueeze(1) for b, s in zip(be, sp)]
                rec: dict[int, torch.Tensor] = {}
                low = net.lower(A0, lo, hi, bnd, al, terms, rec) + d0
                top = low.max(1).values  # the disjunct is refuted if any of its rows is > 0
                better = top.detach() > best
                best = torch.where(better, top.detach(), best)
                for j in range(L):
                    best_al[j][better] = al[j].detach()[better]
                    best_be[j][better] = be[j].detach()[better]
                if it == 0 or bool(better.any()):
                    record = {j: r.detach() for j, r in rec.items()}
                    best_row = low.detach().argmax(1)
                if bool((best > 0).all()) or it == iterations - 1:
                    break
                grads = torch.autograd.grad(-top.clamp(max=1e-3).sum(), al + be)
            with torch.no_grad():
                for k, (p, g) in enumerate(zip(al + be, grads)):
                    m1[k].mul_(0.9).add_(g, alpha=0.1)
                    m2[k].mul_(0.999).addcmul_(g, g, value=0.001)
                    lr = lr_alpha if k < L else lr_beta
                    step = lr * (m1[k] / (1 - 0.9 ** (it + 1))) / ((m2[k] / (1 - 0.999 ** (it + 1))).sqrt() + 1e-8)
                    p.sub_(step)
                    p.clamp_(0, 1) if k < L else p.clamp_(min=0)
        done += B
        # A sub-domain's minimum is at least its parent's: keep the better of the two bounds.
        best = torch.maximum(best, inherited)
        open_ = ~(best > 0) & ~empty  # a NaN bound proves nothing
        if not bool(open_.any()):
            continue
        idx = open_.nonzero().flatten()
        if search is not None and searched <= search_share * (time.monotonic() - started):
            t_search = time.monotonic()
            x = search(_primal_points(lo, hi, record[-1], best_row, idx[best[idx].argsort()[:search_starts]]))
            searched += time.monotonic() - t_search
            if x is not None:
                return BabOutcome(False, done, "counterexample", x.reshape(-1))
        # Branching scores (BaBSR) on unsplit unstable neurons of each open domain.
        score_layers = []
        for j in range(L):
            l, u = bnd[slots[j]][0][idx], bnd[slots[j]][1][idx]
            unstable = (l < 0) & (u > 0) & (sp[j][idx] == 0)
            a = record[j][idx].max(1).values if R > 1 else record[j][idx, 0]
            intercept = torch.where(unstable, -l * u / (u - l).clamp(min=1e-12), torch.zeros_like(l))
            s = (-a.clamp(max=0)) * intercept
            s = torch.where(unstable, s + 1e-9 * (u - l), torch.full_like(s, -1.0))  # width breaks ties
            score_layers.append(s)
        scores = torch.cat(score_layers, 1)
        closed = scores.max(1).values < 0  # no unstable neuron left: the network is affine on the domain
        for k in closed.nonzero().flatten().tolist():
            b = int(idx[k])
            refuted, x = close_domain(net, lo, hi, A0[b], d0[b], [(t[0][b], t[1][b]) for t in bnd], [s[b] for s in sp])
            if refuted:
                continue
            if x is not None and check is not None and bool(check(x.reshape(1, -1))):
                return BabOutcome(False, done, "counterexample", x.reshape(-1))
            return BabOutcome(False, done, "exhausted")
        keep_open = ~closed
        idx, scores = idx[keep_open], scores[keep_open]
        if len(idx) == 0:
            continue
        pick = _fsb(net, lo, hi, A0[idx], d0[idx], [(t[0][idx], t[1][idx]) for t in bnd],
                    [s[idx] for s in sp], scores, sizes, fsb_candidates)
        offsets = torch.tensor([0] + sizes, device=dev).cumsum(0)
        pick_layer = torch.searchsorted(offsets[1:], pick, right=True)
        for sign in (1, -1):
            new_sp = [s[idx].clone() for s in sp]
            for j in range(L):
                in_j = (pick >= offsets[j]) & (pick < offsets[j + 1])
                rows = in_j.nonzero().flatten()
                new_sp[j][rows, pick[rows] - offsets[j]] = sign
            pool.push([best[idx], rt[idx], pick_layer, *new_sp, *(c[idx] for c in best_al), *(c[idx] for c in best_be),
                       *(c[0][idx] for c in bnd), *(c[1][idx] for c in bnd)])
    return BabOutcome(True, done, "proved")


def _primal_points(lo, hi, A_in, rows, domains) -> torch.Tensor:
    """The box corner minimising each domain's linear lower bound on its row `rows[b]`: x = lo where
    the input coefficient is >= 0, else hi. A_in (B, R, n_inputs); returns (len(domains), n_inputs)."""
    a = A_in[domains, rows[domains]]
    return torch.where(a >= 0, lo.reshape(1, -1), hi.reshape(1, -1))


def _fsb(net: BabNetwork, lo, hi, A0, d0, bnd, sp, scores, sizes, k: int) -> torch.Tensor:
    """Filtered smart branching: of the top-k BaBSR candidates per domain, the one whose worse child
    bound (one CROWN pass per child, intermediate bounds kept) is highest. Returns flat indices (B,)."""
    B = scores.shape[0]
    k = max(1, min(k, int((scores >= 0).sum(1).min())))
    cand = scores.topk(k, dim=1).indices  # (B, k)
    if k == 1:
        return cand[:, 0]
    offsets = torch.tensor([0] + sizes, device=scores.device).cumsum(0)
    slots = net.slots
    L = len(slots)
    with torch.no_grad():
        # Children as one batch: (candidate, sign, domain).
        reps = 2 * k
        bb = [(l.repeat(reps, 1), u.repeat(reps, 1)) for l, u in bnd]
        for c in range(k):
            for si, sign in enumerate((1, -1)):
                block = slice((2 * c + si) * B, (2 * c + si + 1) * B)
                for j in range(L):
                    in_j = (cand[:, c] >= offsets[j]) & (cand[:, c] < offsets[j + 1])
                    rows = in_j.nonzero().flatten()
                    col = cand[rows, c] - offsets[j]
                    l, u = bb[slots[j]]
                    tgt = rows + block.start
                    if sign > 0:
                        l[tgt, col] = l[tgt, col].clamp(min=0)
                    else:
                        u[tgt, col] = u[tgt, col].clamp(max=0)
        low = net.lower(A0.repeat(reps, 1, *([1] * (A0.dim() - 2))), lo, hi, bb) + d0.repeat(reps, 1)
        top = low.max(1).values.reshape(k, 2, B)
        worst = top.min(1).values.T  # (B, k): a split is as good as its worse child
    return cand.gather(1, worst.argmax(1, keepdim=True)).squeeze(1)
