"""Logit gaps and the first-order prediction of adversarial error (Cubuk et al. 2017, section 4).

For a correctly classified point with logits Z and label y, the logit gap is
Delta = Z_y - max_{i != y} Z_i > 0. To first order, a perturbation delta changes it by
grad_x Delta . delta, and the most harmful delta with ||delta||_p <= eps lowers it by
eps * ||grad_x Delta||_q (q the dual norm: L1 for Linf attacks, L2 for L2 attacks). So the point
flips once eps > Delta / ||grad_x Delta||_q, and the adversarial error at eps is predicted as the
fraction of points whose normalised gap is below eps: the CDF of normalised gaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from robustcli.attacks.base import eval_mode, input_gradient
from robustcli.attacks.losses import margin

DUAL_NORM = {"linf": 1.0, "l2": 2.0}  # attack norm -> p of the dual norm of the gradient


@dataclass
class LogitGaps:
    correct: torch.Tensor  # bool (N,): clean prediction == label
    gap: torch.Tensor  # (M,) Delta at the M correctly classified points
    sorted_gaps: torch.Tensor  # (M, K-1): top logit minus the 2nd, 3rd, ... largest logit
    grad_norm: dict[str, torch.Tensor]  # attack norm -> (M,) ||grad_x Delta|| in the dual norm

    def normalised(self, norm: str) -> torch.Tensor:
        """Delta / ||grad_x Delta||_dual: the first-order distance to the boundary (inf if the gradient is 0)."""
        g = self.grad_norm[norm]
        return torch.where(g > 0, self.gap / g.clamp_min(1e-30), torch.full_like(self.gap, float("inf")))

    def first_order_error(self, norm: str, eps: torch.Tensor) -> torch.Tensor:
        """Predicted error among correctly classified points: P(Delta / ||grad Delta||_dual < eps)."""
        r = self.normalised(norm)
        if len(r) == 0:
            return torch.full((len(eps),), float("nan"), dtype=torch.float64)
        return (r[None, :].double() < eps[:, None].double()).double().mean(1)


def logit_gaps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norms: tuple[str, ...],
    *,
    device: torch.device,
    batch_size: int = 256,
    on_batch: Callable[[int], None] | None = None,
) -> LogitGaps:
    """Gaps, sorted gaps and dual-norm gradient norms of Delta at the correctly classified points.

    Results stay on `device`; the caller moves them for reporting.
    """
    correct, gaps, ranked, grads = [], [], [], {n: [] for n in norms}
    with eval_mode(model), torch.enable_grad():
        for start in range(0, len(y), batch_size):
            xb = x[start : start + batch_size].to(device)
            yb = y[start : start + batch_size].to(device)
            logits, grad = input_gradient(model, xb, lambda z: margin(z, yb))
            ok = logits.argmax(1) == yb
            correct.append(ok)
            gaps.append(margin(logits, yb)[ok])
            top = logits[ok].sort(1, descending=True).values
            ranked.append(top[:, :1] - top[:, 1:])
            flat = grad[ok].flatten(1)
            for n in norms:
                grads[n].append(flat.norm(p=DUAL_NORM[n], dim=1))
            if on_batch is not None:
                on_batch(len(yb))
    return LogitGaps(
        torch.cat(correct),
        torch.cat(gaps),
        torch.cat(ranked),
        {n: torch.cat(v) for n, v in grads.items()},
    )
