"""Branch and bound on ReLU splits with alpha/beta-CROWN bounds (Wang et al. 2021, "Beta-CROWN").

A domain fixes some unstable ReLUs to active (z >= 0) or inactive (z <= 0). Its lower bound of
the specification comes from a CROWN backward pass where
- intermediate bounds are the parent's (those of the whole box, still valid in a sub-domain),
  clamped at split neurons (l = max(l, 0) if active, u = min(u, 0) if inactive), so split ReLUs
  are relaxed exactly;
- each split constraint s_k z_k >= 0 enters with a Lagrange multiplier beta_k >= 0 (eq. 7 of the
  paper: the term -beta_k s_k z_k is added to the objective), and the lower slopes alpha of the
  remaining unstable ReLUs are optimised with beta by projected Adam.
Any alpha in [0, 1] and beta >= 0 give a sound bound, so a domain whose bound is positive holds.
A domain is split on the unsplit unstable ReLU with the largest BaBSR intercept score
(Bunel et al. 2020): |min(A, 0)| * (-l u / (u - l)), the bound lost to that neuron's upper line.
The property holds once every domain is refuted; a domain without unstable ReLUs whose bound is
still not positive ends the search (that region may hold a counterexample).

Choice: intermediate bounds are not recomputed per domain (beta-CROWN's default for speed), and
a child starts from its parent's alpha and beta (0 for the new split).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from robustcli.certify.chain_bounds import Chain, backward_lower


@dataclass
class BabOutcome:
    proved: bool
    domains: int  # domains bounded
    reason: str  # proved | timeout | exhausted (a domain without unstable ReLUs stayed <= 0) | limit


def _clamp(bounds, splits):
    out = []
    for (l, u), s in zip(bounds, splits):
        out.append((torch.where(s > 0, l.clamp(min=0), l), torch.where(s < 0, u.clamp(max=0), u)))
    return out


def bab_refute(
    chain: Chain,
    lo: torch.Tensor,
    hi: torch.Tensor,
    C: torch.Tensor,
    d: torch.Tensor,
    bounds: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    deadline: float | None,
    batch: int = 256,
    iterations: int = 5,
    lr_alpha: float = 0.1,
    lr_beta: float = 0.05,
    max_domains: int = 200_000,
) -> BabOutcome:
    """Try to prove, for every root j, that some row of C[j] z_L + d[j] is > 0 on the whole box.

    C (D, R, n_outputs), d (D, R): D disjuncts (roots) of up to R rows, searched together so that
    each round bounds one batch across all of them (pad short disjuncts with rows C = 0, d = -1).
    """
    L = len(bounds)
    D, R = C.shape[0], C.shape[1]
    flat = [(l.reshape(1, -1), u.reshape(1, -1)) for l, u in bounds]
    sizes = [f[0].shape[1] for f in flat]
    A_roots = C.reshape(D, R, *chain.out_shapes[-1])
    dev, dt = chain.device, chain.dtype
    # Domain queue: root index, split signs per layer (int8), alphas and betas per layer.
    roots = torch.arange(D, device=dev)
    splits = [torch.zeros(D, n, dtype=torch.int8, device=dev) for n in sizes]
    alphas = [(f[1] > -f[0]).to(dt).reshape(1, 1, -1).expand(D, R, -1).clone() for f in flat]
    betas = [torch.zeros(D, R, n, dtype=dt, device=dev) for n in sizes]
    scores_lb = torch.full((D,), float("-inf"), dtype=dt, device=dev)
    done = 0
    while len(scores_lb):
        if deadline is not None and time.monotonic() > deadline:
            return BabOutcome(False, done, "timeout")
        if done > max_domains:
            return BabOutcome(False, done, "limit")
        order = scores_lb.argsort()[:batch]  # worst domains first
        rest = torch.ones(len(scores_lb), dtype=torch.bool, device=dev)
        rest[order] = False
        take = lambda ts: [t[order] for t in ts]  # noqa: E731
        keep = lambda ts: [t[rest] for t in ts]  # noqa: E731
        sp, al, be, rt = take(splits), take(alphas), take(betas), roots[order]
        splits, alphas, betas, scores_lb, roots = keep(splits), keep(alphas), keep(betas), scores_lb[rest], roots[rest]
        A0, d0 = A_roots[rt], d[rt]
        B = len(order)
        bnd = _clamp([(l.expand(B, -1), u.expand(B, -1)) for l, u in flat], sp)
        al = [a.clone().requires_grad_(True) for a in al]
        be = [b.clone().requires_grad_(True) for b in be]
        m1 = [torch.zeros_like(t) for t in al + be]
        m2 = [torch.zeros_like(t) for t in al + be]
        best = torch.full((B,), float("-inf"), dtype=dt, device=dev)
        best_al = [a.detach().clone() for a in al]
        best_be = [b.detach().clone() for b in be]
        record: dict[int, torch.Tensor] = {}
        for it in range(iterations):
            if deadline is not None and time.monotonic() > deadline:
                return BabOutcome(False, done, "timeout")
            with torch.enable_grad():
                terms = [-b * s.to(dt).unsqueeze(1) for b, s in zip(be, sp)]
                rec: dict[int, torch.Tensor] = {}
                low = backward_lower(chain, L, A0, lo, hi, bnd, al, terms, rec) + d0
                top = low.max(1).values  # the disjunct is refuted if any of its rows is > 0
                better = top.detach() > best
                best = torch.where(better, top.detach(), best)
                for j in range(L):
                    best_al[j][better] = al[j].detach()[better]
                    best_be[j][better] = be[j].detach()[better]
                if it == 0 or bool(better.any()):
                    record = {j: r.detach() for j, r in rec.items()}
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
        open_ = best <= 0
        if not bool(open_.any()):
            continue
        # Branch: BaBSR intercept score on unsplit unstable neurons of each open domain.
        idx = open_.nonzero().flatten()
        score_layers = []
        for j in range(L):
            l, u = bnd[j][0][idx], bnd[j][1][idx]
            unstable = (l < 0) & (u > 0) & (sp[j][idx] == 0)
            a = record[j][idx].max(1).values if R > 1 else record[j][idx, 0]
            intercept = torch.where(unstable, -l * u / (u - l).clamp(min=1e-12), torch.zeros_like(l))
            s = (-a.clamp(max=0)) * intercept
            s = torch.where(unstable, s + 1e-9 * (u - l), torch.full_like(s, -1.0))  # width breaks ties
            score_layers.append(s)
        scores = torch.cat(score_layers, 1)
        best_score, pick = scores.max(1)
        if bool((best_score < 0).any()):
            return BabOutcome(False, done, "exhausted")
        offsets = torch.tensor([0] + sizes, device=dev).cumsum(0)
        children_sp, children_al, children_be = [], [], []
        for sign in (1, -1):
            new_sp = [s[idx].clone() for s in sp]
            for j in range(L):
                in_j = (pick >= offsets[j]) & (pick < offsets[j + 1])
                rows = in_j.nonzero().flatten()
                new_sp[j][rows, pick[rows] - offsets[j]] = sign
            children_sp.append(new_sp)
            children_al.append([a[idx] for a in best_al])
            children_be.append([b[idx] for b in best_be])
        for k in range(2):
            splits = [torch.cat([s, c]) for s, c in zip(splits, children_sp[k])]
            alphas = [torch.cat([a, c]) for a, c in zip(alphas, children_al[k])]
            betas = [torch.cat([b, c]) for b, c in zip(betas, children_be[k])]
            scores_lb = torch.cat([scores_lb, best[idx]])
            roots = torch.cat([roots, rt[idx]])
    return BabOutcome(True, done, "proved")
