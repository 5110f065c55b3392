"""Margin PGD on a VNNLIB specification: look for an input in the box whose outputs meet one of the
property's violation conjunctions.

For a conjunction with margins m_k(y) = C_k y + d_k (violated when all m_k <= 0) the attack
minimises max_k m_k(f(x)) over the box by signed-gradient steps (Madry et al. 2018, eq. 2, with
the box as the feasible set), from uniform random starts, every disjunct attacked in one batch.
Where a disjunct is one margin y_a - y_t + d of two outputs (a robustness property's "class t
wins"), every other start follows the targeted cross-entropy logsumexp(y) - y_t instead (Carlini &
Wagner 2017 compare such losses): its softmax weights keep a useful gradient where the margin's
is flat, and on mnistfc it finds counterexamples the margin alone misses (256x4 prop_1_0.05).
Either way a point counts only by its margins.
Step size (our choice): a quarter of the box width, decayed to 0 on a cosine schedule. Large
early steps reach the box's corners, where counterexamples of Linf properties usually lie; on
VNN-COMP mnistfc this found counterexamples that Madry's constant 2.5 * half-width / steps missed
(256x6 prop_9_0.05). The search is heuristic; its answer only counts once re-checked (see
spec_verify).
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from robustcli.certify.rounding import round_down, round_up
from robustcli.certify.vnnlib import SpecCase
from robustcli.core.nn import eval_mode


def float32_box(lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The box rounded inward to float32, so every float32 point in it lies in the real box."""
    return round_up(lower, torch.float32), round_down(upper, torch.float32)


def spec_pgd(
    model: nn.Module,
    case: SpecCase,
    input_shape: tuple[int, ...],
    *,
    steps: int = 50,
    restarts: int = 10,
    generator: torch.Generator | None = None,
    deadline: float | None = None,
    starts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Candidate counterexamples (M, n_inputs) float32 in the box, best first (may be empty).

    Returns points whose margins the model (in float32) puts on the violation side, in order of
    how far; an empty result means none was found. `starts` (S, n_inputs): start every disjunct
    from each of these points (clipped to the box) instead of `restarts` random ones.
    """
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    lo, hi = (t.to(device) for t in float32_box(case.lower, case.upper))
    C, d, rows = case.stacked()
    C, d = C.to(device, torch.float32), d.to(device, torch.float32)
    D = len(rows)
    if starts is not None:
        restarts = len(starts)
    if D == 0 or restarts == 0:
        return torch.empty(0, lo.numel(), device=device)
    if C.shape[0] == 0:  # no output condition: any input in the box violates
        return ((lo + hi) / 2).reshape(1, -1)
    # mask[j, k]: margin k belongs to disjunct j
    mask = torch.zeros(D, C.shape[0], dtype=torch.bool, device=device)
    for j, sl in enumerate(rows):
        mask[j, sl] = True
    owner = mask.repeat(restarts, 1)  # (D * restarts, K)
    target = _targets(C, rows).to(device).repeat(restarts)  # (D * restarts,), -1: margin loss only
    target[: D * ((restarts + 1) // 2)] = -1  # the first half of the restarts (and the centre) follow the margin
    n = lo.numel()
    if starts is not None:  # start i of disjunct j is row i * D + j
        x = torch.minimum(torch.maximum(starts.to(device, torch.float32).reshape(len(starts), -1), lo), hi)
        x = x.repeat_interleave(D, 0)
    else:
        x = lo + (hi - lo) * torch.rand(D * restarts, n, generator=generator, device="cpu").to(device)
        x[:D] = (lo + hi) / 2  # one start per disjunct at the centre (the clean input for robustness specs)
    width = hi - lo
    found: list[tuple[float, torch.Tensor]] = []

    ce = target >= 0

    def objective(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the disjunct's largest margin, the loss the step descends)."""
        y = model(z.reshape(len(z), *input_shape)).reshape(len(z), -1)
        m = y @ C.T + d
        worst = m.masked_fill(~owner[: len(z)], float("-inf")).amax(1)
        if not bool(ce.any()):
            return worst, worst
        xent = torch.logsumexp(y, 1) - y.gather(1, target.clamp(min=0).unsqueeze(1)).squeeze(1)
        return worst, torch.where(ce, xent, worst)

    with eval_mode(model):
        for it in range(steps + 1):
            xr = x.detach().requires_grad_(True)
            with torch.enable_grad():
                obj, loss = objective(xr)
                # a model whose outputs do not depend differentiably on the input (a comparison cast
                # to float) has no gradient: the starts are still evaluated, they just do not move
                grad = None if it == steps else (
                    torch.autograd.grad(loss.sum(), xr)[0] if loss.requires_grad else torch.zeros_like(xr))
            hit = obj.detach() < 0
            if hit.any():
                for i in hit.nonzero().flatten().tolist():
                    found.append((float(obj[i].detach()), x[i].detach().clone()))
                if len(found) >= 3:
                    break
            if grad is None or (deadline is not None and time.monotonic() > deadline):
                break
            step = 0.25 * 0.5 * (1 + math.cos(math.pi * it / steps)) * width
            x = torch.minimum(torch.maximum(x - step * grad.sign(), lo), hi)
    found.sort(key=lambda t: t[0])
    return torch.stack([t[1] for t in found]) if found else torch.empty(0, n, device=device)


def _targets(C: torch.Tensor, rows: list[slice]) -> torch.Tensor:
    """Per disjunct, the output t of a one-row disjunct y_a - y_t (+ d), else -1."""
    out = torch.full((len(rows),), -1, dtype=torch.long)
    for j, sl in enumerate(rows):
        if sl.stop - sl.start != 1:
            continue
        row = C[sl.start]
        nonzero = row.nonzero().flatten()
        if len(nonzero) == 2 and float(row[nonzero].sum()) == 0.0 and float(row[nonzero].abs().max()) == 1.0:
            out[j] = int(nonzero[row[nonzero] < 0][0])
    return out
