"""Sound bounds of rows over a final softmax (or log-softmax) from bounds of the logit margins.

A classifier that ends in p = softmax(z) (Keras and many exporters write such files) is bounded
through its logits z: a bound engine bounds the pairwise logit margins z_k - z_j, and the rows
C p + d follow from those by elementary algebra (no relaxation of exp):

1. Pairwise margins. L_kj <= z_k - z_j over the input set (the logits bounder, rows e_k - e_j);
   L_jj = 0, and a margin not bounded counts as L_kj = -inf. Then U_kj = -L_jk >= z_k - z_j.
2. Each probability. p_j = 1 / sum_k exp(z_k - z_j) (k includes j, whose term is exp(0) = 1), and
   the map is decreasing in every z_k - z_j, so
       p_j >= 1 / sum_k exp(U_kj) = exp(-logsumexp_k U_kj) = p_j_low,
       p_j <= 1 / sum_k exp(L_kj) = exp(-logsumexp_k L_kj) = p_j_up   (<= 1: the k = j term).
3. Margin rows a (e_i - e_j), a > 0. With m = z_i - z_j >= L = L_ij, softmax keeps the order of
   the logits and
       p_i - p_j = p_j (e^m - 1) >= (e^L - 1) * (p_j_low if L >= 0 else p_j_up)        (form 1)
       p_i - p_j = p_i (1 - e^-m) >= (1 - e^-L) * (p_i_low if L >= 0 else p_i_up)      (form 2)
   since e^m - 1 >= e^L - 1 and 1 - e^-m >= 1 - e^-L, each multiplied by a positive p in its
   interval on the side that keeps the product's sign. Both hold; the larger is taken. Each is > 0
   exactly when L > 0 (a positive factor times p_low > 0), and <= 0 when L <= 0, so a softmax
   model's margins certify exactly where its logits' do. Form 2 matters for certification: when i
   beats every other class (all L_ik > 0), U_ki < 0 so p_i_low >= 1/K, and the bound is about
   (1 - e^-L) / K, well inside the dtype's range even where p_j_low underflows.
4. Any row C p + d: sum_k C_k (p_k_low if C_k > 0 else p_k_up) + d (the interval bound); a margin
   row takes the larger of 3 and 4.

A final log-softmax: log p_j = -logsumexp_k (z_k - z_j), so log p_j lies in
[-logsumexp_k U_kj, -logsumexp_k L_kj], and rows summing to zero are exact on the logits:
C log_softmax(z) + d = C z + d (the log-sum-exp cancels).

Clamped log-probabilities g_k = log max(p_k, t) (core.nn.LogProbabilities, t the dtype's smallest
normal number: how the CLI attacks and reports a softmax model): g_k = max(log p_k, c) with
c = log t, so g_k lies in [max(log p_k_low, c), max(log p_k_up, c)]. For a margin row, with
a = log p_i, b = log p_j and a - b = z_i - z_j >= L: max is nondecreasing and 1-Lipschitz, so
g_i - g_j >= min(0, a - b) >= min(0, L); and when a > c, g_i - g_j = min(a - b, a - c)
>= min(L, log p_i_low - c). The bound is > 0 exactly when L > 0 and log p_i_low > c, which holds
for a certified point's margins (its class beats every other, so p_i_low >= 1/K).

Rounding: everything is computed in float64 from the (sound) logit bounds, with outward slack
far above float64's error of these few operations (exp, log1p, logsumexp over K terms: a few K
units in the last place), relative on the factors (so a positive margin bound stays positive) and
absolute on sums of mixed signs; the result is rounded down to the caller's dtype
(certify/rounding.py). Infinite or NaN logit bounds count as unbounded (-inf lower bounds).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from robustcli.certify.rounding import round_down

if TYPE_CHECKING:  # bounders imports this module
    from robustcli.certify.bounders import Bounder, InputSet, ReluInputBounds

HEADS = ("log_softmax", "softmax")
ALL_PAIRS_UP_TO = 32  # classes: up to here every ordered pair is bounded (K (K - 1) rows, 992 at most)
_REL = 2.0**-36  # relative slack of a float64 factor (its rounding error is below 2^-45 for K < 10^6)
_EPS = torch.finfo(torch.float64).eps
_MAX_MARGIN = 700.0  # exp stays finite in float64 below 709.8; lowering a lower bound is sound


def pair_rows(K: int, first: torch.Tensor | None = None, *, device: torch.device | None = None) -> torch.Tensor:
    """(P, 2) ordered pairs (k, j), k != j, whose margins z_k - z_j to bound: all of them, or with
    `first` (a set of class indices) only those with k in `first`."""
    k, j = torch.meshgrid(torch.arange(K, device=device), torch.arange(K, device=device), indexing="ij")
    keep = k != j
    if first is not None:
        keep &= torch.isin(k, first.to(k.device))
    return torch.stack([k[keep], j[keep]], 1)


def pair_spec(pairs: torch.Tensor, K: int, dtype: torch.dtype) -> torch.Tensor:
    """(..., P, K) rows e_k - e_j for pairs (..., P, 2)."""
    eye = torch.eye(K, dtype=dtype, device=pairs.device)
    return eye[pairs[..., 0]] - eye[pairs[..., 1]]


def margin_matrix(low: torch.Tensor, pairs: torch.Tensor, K: int) -> torch.Tensor:
    """(N, K, K) float64 L with L[n, k, j] <= z_k - z_j: `low` (N, P) bounds the rows of `pairs`
    (N, P, 2) or (P, 2); the diagonal is 0 and a pair not bounded is -inf."""
    N = low.shape[0]
    pairs = pairs.expand(N, *pairs.shape[-2:]) if pairs.dim() == 2 else pairs
    low = torch.nan_to_num(low.double(), nan=float("-inf"), posinf=_MAX_MARGIN).clamp(max=_MAX_MARGIN)
    L = torch.full((N, K * K), float("-inf"), dtype=torch.float64, device=low.device)
    L = L.scatter_reduce(1, pairs[..., 0] * K + pairs[..., 1], low, "amax")
    L = L.view(N, K, K)
    eye = torch.eye(K, dtype=torch.bool, device=low.device)
    return L.masked_fill(eye, 0.0)


def softmax_intervals(L: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(p_low, p_up), each (N, K) float64, with p_low <= softmax(z) <= p_up for every z whose margins
    z_k - z_j lie in [L_kj, -L_jk] (step 2 of the module docstring), rounded outward."""
    U = -L.transpose(1, 2)  # U[n, k, j] = -L[n, j, k] >= z_k - z_j
    p_low = torch.exp(-torch.logsumexp(U, 1)) * (1 - _REL)
    p_up = (torch.exp(-torch.logsumexp(L, 1)) * (1 + _REL)).clamp(max=1.0)
    return p_low, p_up


def log_softmax_intervals(L: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lp_low, lp_up) (N, K) float64 bounds of log_softmax(z), from the same margins, rounded outward."""
    U = -L.transpose(1, 2)
    lse_u, lse_l = torch.logsumexp(U, 1), torch.logsumexp(L, 1)
    return -lse_u - _REL * lse_u.abs() - _EPS, (-lse_l + _REL * lse_l.abs() + _EPS).clamp(max=0.0)


def interval_rows(C: torch.Tensor, low: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """(N, S) float64 lower bound of C v for v in [low, up] (N, K), C (N, S, K): sum_k C_k (low_k if
    C_k > 0 else up_k), lowered by a bound on float64's summation error."""
    C = C.double()
    pos, neg = C.clamp(min=0), C.clamp(max=0)
    lo, hi = low[:, None, :], up[:, None, :]
    terms = torch.where(pos > 0, pos * lo, 0.0) + torch.where(neg < 0, neg * hi, 0.0)
    total = terms.sum(-1)
    scale = terms.abs().nan_to_num(posinf=0.0).sum(-1)
    return torch.nan_to_num(total - (C.shape[-1] + 2) * _EPS * scale, nan=float("-inf"))


def margin_rows(C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which rows of C (N, S, K) are a (e_i - e_j) with a > 0: (mask, i, j, a), each (N, S)."""
    nonzero = (C != 0).sum(-1)
    a, i = C.max(-1)
    b, j = (-C).max(-1)
    return (nonzero == 2) & (a > 0) & (a == b), i, j, a


def softmax_rows_lower(C: torch.Tensor, d: torch.Tensor | None, L: torch.Tensor) -> torch.Tensor:
    """(N, S) float64 sound lower bound of C softmax(z) + d for every z with margins bounded by L
    (N, K, K): the interval bound of every row, and for margin rows the larger of it and the margin
    forms (steps 3-4 of the module docstring)."""
    p_low, p_up = softmax_intervals(L)
    low = interval_rows(C, p_low, p_up)
    mask, i, j, a = margin_rows(C)
    if bool(mask.any()):
        m = L.gather(1, i[:, :, None].expand(-1, -1, L.shape[2])).gather(2, j[:, :, None]).squeeze(2)  # L_ij
        pick = lambda p, k: p.gather(1, k)  # noqa: E731
        up_side = m >= 0
        form1 = torch.expm1(m) * torch.where(up_side, pick(p_low, j), pick(p_up, j))
        form2 = -torch.expm1(-m) * torch.where(up_side, pick(p_low, i), pick(p_up, i))
        best = torch.maximum(torch.nan_to_num(form1, nan=float("-inf")), torch.nan_to_num(form2, nan=float("-inf")))
        best = a.double() * best
        best = best - _REL * best.abs()  # keeps the sign: a positive margin bound stays positive
        low = torch.where(mask, torch.maximum(low, best), low)
    return _plus(low, d)


def log_softmax_rows_lower(C: torch.Tensor, d: torch.Tensor | None, L: torch.Tensor) -> torch.Tensor:
    """(N, S) float64 lower bound of C log_softmax(z) + d by the intervals of log p (rows summing to
    zero are better bounded on the logits directly: see `SpecRows`)."""
    lp_low, lp_up = log_softmax_intervals(L)
    return _plus(interval_rows(C, lp_low, lp_up), d)


def _plus(low: torch.Tensor, d: torch.Tensor | None) -> torch.Tensor:
    """low + d rounded down (one step toward -inf when d moves it: round-to-nearest may round up)."""
    if d is None:
        return low
    d = d.double()
    s = low + d
    return torch.where(d != 0, torch.nextafter(s, torch.full_like(s, float("-inf"))), s)


def log_probability_rows_lower(C: torch.Tensor, d: torch.Tensor | None, L: torch.Tensor, tiny: float) -> torch.Tensor:
    """(N, S) float64 lower bound of C g + d, g = log max(softmax(z), tiny) (module docstring)."""
    c = torch.log(torch.tensor(tiny, dtype=torch.float64))
    c_low, c_up = c - _REL * c.abs(), c + _REL * c.abs()
    lp_low, lp_up = log_softmax_intervals(L)
    low = interval_rows(C, lp_low.clamp(min=c_low), lp_up.clamp(min=c_up))
    mask, i, j, a = margin_rows(C)
    if bool(mask.any()):
        m = L.gather(1, i[:, :, None].expand(-1, -1, L.shape[2])).gather(2, j[:, :, None]).squeeze(2)  # L_ij
        above = lp_low.gather(1, i) - c_up  # log p_i_low - c (a lower bound of it)
        best = torch.where(m < 0, m, torch.minimum(m, above).clamp(min=0.0))
        best = a.double() * best
        best = best - _REL * best.abs()
        low = torch.where(mask, torch.maximum(low, best), low)
    return _plus(low, d)


def rows_lower(head: str, C: torch.Tensor, d: torch.Tensor | None, L: torch.Tensor) -> torch.Tensor:
    if head == "softmax":
        return softmax_rows_lower(C, d, L)
    if head == "log_softmax":
        return log_softmax_rows_lower(C, d, L)
    raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")


class SoftmaxRows:
    """A bounder of a model's logits z standing for the same model with a final softmax: every row
    C p + d is bounded from the pairwise logit margins (module docstring), a real lower bound, > 0
    for a margin row exactly where the logits' margin bound is. With `log_tiny` (t), rows over
    g = log max(p, t) instead (the CLI's LogProbabilities wrapper of a softmax model).

    Which logit margins are bounded: for a specification of margin rows only (`certify`'s rows
    e_y - e_j) or more than ALL_PAIRS_UP_TO classes, the pairs (i, k) of the classes i with a
    positive coefficient in the point's rows, i.e. the rows the logits model itself is bounded on
    (form 2, p_i_low and the clamped log-probability margins need no more; the rest count as
    unbounded), so certifying costs what it costs on the logits. Any other specification bounds
    every ordered pair (K (K - 1) rows: 90 for 10 classes; alpha-CROWN then costs about 10x the
    logits' on 10 classes, measured), which every row's interval bound uses."""

    def __init__(self, logits: "Bounder", log_tiny: float | None = None):
        self.logits = logits
        self.log_tiny = log_tiny

    def _pairs(self, C: torch.Tensor) -> torch.Tensor:
        N, _, K = C.shape
        if K <= ALL_PAIRS_UP_TO and not bool(margin_rows(C)[0].all()):
            return pair_rows(K, device=C.device).expand(N, -1, -1)
        per_point = [pair_rows(K, (C[n] > 0).any(0).nonzero().flatten(), device=C.device) for n in range(N)]
        width = max(len(p) for p in per_point)
        # every point bounds the same number of rows: a short list repeats its first pair (amax keeps it)
        return torch.stack([torch.cat([p, p[:1].expand(width - len(p), 2)]) if len(p) else
                            pair_rows(K, torch.tensor([0]), device=C.device) for p in per_point])

    def lower(self, inputs: "InputSet", C: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        K = C.shape[-1]
        pairs = self._pairs(C)
        low = self.logits.lower(inputs, pair_spec(pairs, K, C.dtype)).detach()
        L = margin_matrix(low.to(C.device), pairs, K)
        if self.log_tiny is not None:
            return round_down(log_probability_rows_lower(C, d, L, self.log_tiny), C.dtype)
        return round_down(softmax_rows_lower(C, d, L), C.dtype)

    def intermediate(self, inputs: "InputSet") -> list["ReluInputBounds"]:
        return self.logits.intermediate(inputs)


class SpecRows:
    """The rows a property's verifier bounds on the logits of a model with a final `head`, and how
    their bounds answer the property's rows C y + d (C (S, K), d (S,), y the model's output).

    Rows bounded directly on the logits (`direct`), with the same sign as the row over y:
    - log-softmax: rows summing to zero, exactly (C log_softmax(z) + d = C z + d);
    - softmax: margin rows a (Y_i - Y_j) with d = 0: a (p_i - p_j) > 0 iff z_i > z_j (softmax keeps
      the order), so the logit margin's bound is > 0 exactly when the row's could be; branch and
      bound may split on these rows as on a logits model.
    Every other row is bounded through the intervals of p (or log p) from all pairwise logit margins
    (`rows_lower`): sound and weaker, and branch and bound cannot split on it.

    `certificates(low_z)` gives, per property row, a number > 0 only where the row is > 0 over the
    input set (the verifier's only question): for direct rows the logit row's bound, for the others
    the row's lower bound over y."""

    def __init__(self, head: str, C: torch.Tensor, d: torch.Tensor):
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")
        self.head, self.K = head, C.shape[-1]
        if len(C) == 0:  # no output condition
            self.direct = torch.zeros(0, dtype=torch.bool, device=C.device)
            dz = d
        elif head == "log_softmax":
            # exactly zero sums only (math.fsum: no rounding), so the log-sum-exp cancels exactly
            self.direct = torch.tensor([math.fsum(row) == 0 for row in C.tolist()], dtype=torch.bool, device=C.device)
            dz = d
        else:
            mask, _, _, _ = margin_rows(C[None])
            self.direct = mask[0] & (d == 0)
            dz = torch.zeros_like(d)
        self.C, self.d = C, d
        self.n_direct = int(self.direct.sum())
        self.pairs = pair_rows(self.K, device=C.device) if bool((~self.direct).any()) else torch.zeros(0, 2, dtype=torch.long)
        self.logit_C = torch.cat([C[self.direct], pair_spec(self.pairs, self.K, C.dtype)])
        self.logit_d = torch.cat([dz[self.direct], torch.zeros(len(self.pairs), dtype=d.dtype, device=d.device)])

    def certificates(self, low_z: torch.Tensor) -> torch.Tensor:
        """(B, S) from the bounds `low_z` (B, len(logit_C)) of the logit rows."""
        B = low_z.shape[0]
        direct = self.direct.to(low_z.device)
        out = torch.empty(B, len(self.C), dtype=torch.float64, device=low_z.device)
        out[:, direct] = low_z[:, : self.n_direct].double()
        if len(self.pairs):
            L = margin_matrix(low_z[:, self.n_direct :], self.pairs.to(low_z.device), self.K)
            rest = ~direct
            C, d = self.C.to(low_z.device)[rest], self.d.to(low_z.device)[rest]
            out[:, rest] = rows_lower(self.head, C[None].expand(B, -1, -1), d[None], L)
        return out

    def direct_rows(self, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """The logit rows (C_z, d_z) standing for the direct rows among the property rows `rows`."""
        idx = torch.arange(len(self.C))[rows]
        keep = idx[self.direct[idx]]
        position = torch.cumsum(self.direct.long(), 0) - 1  # a direct row's index among the logit rows
        at = position[keep]
        return self.logit_C[at], self.logit_d[at]
