"""The strong suite: AutoAttack's "standard" ensemble without FAB-T (Croce & Hein 2020, section 5).

APGD-CE, then APGD-T (targeted DLR over the top-9 other classes), then Square (5,000 queries),
each only on the points the attacks before it left unbroken, worst case per point over all
(RobustBench's rule). FAB-T is left out: AutoAttack's authors report it rarely adds to APGD-T
on standard evaluations; the other three cover the two failure modes that matter here (a
saturated softmax: DLR is scale invariant; masked or useless gradients: Square needs none).

In L2 the suite is APGD-CE and APGD-T only (this project has no L2 Square attack yet).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from robustcli.attacks.apgd import APGD
from robustcli.attacks.base import Attack
from robustcli.attacks.evaluate import WORST_CASE, Evaluation, evaluate, worst_case
from robustcli.attacks.square import SquareLinf

SUITES = ("strong",)


def strong_suite(
    eps: Sequence[float],
    norm: str = "linf",
    *,
    steps: int = 100,
    target_classes: int = 9,
    queries: int = 5000,
) -> list[tuple[Attack, list[float]]]:
    """The plan (attack, budgets) of the strong suite, in the order it runs."""
    plan: list[tuple[Attack, list[float]]] = [
        (APGD(norm=norm, loss="ce", steps=steps), list(eps)),
        (APGD(norm=norm, loss="dlr-targeted", steps=steps, target_classes=target_classes), list(eps)),
    ]
    if norm == "linf":
        plan.append((SquareLinf(queries=queries), list(eps)))
    return plan


def run_strong_suite(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: Sequence[float],
    *,
    device: torch.device,
    norm: str = "linf",
    steps: int = 100,
    target_classes: int = 9,
    queries: int = 5000,
    batch_size: int = 256,
    seed: int = 0,
    targets: torch.Tensor | None = None,
    keep_adversarials: bool = False,
    on_batch: Callable[[int], None] | None = None,
    offset: int = 0,
) -> Evaluation:
    """Run the strong suite as a cascade; the worst-case rows are the suite's robust accuracy.

    `offset`: x's first index in the full data set when x is a shard (see `evaluate`).
    """
    plan = strong_suite(eps, norm, steps=steps, target_classes=target_classes, queries=queries)
    return evaluate(
        model,
        x,
        y,
        plan,
        device=device,
        batch_size=batch_size,
        seed=seed,
        targets=targets,
        keep_adversarials=keep_adversarials,
        on_batch=on_batch,
        only_unbroken=True,
        offset=offset,
    )


def merge_evaluations(first: Evaluation, second: Evaluation) -> Evaluation:
    """One evaluation from two on the same points: all attack rows, worst case recomputed over both."""
    if not torch.equal(first.clean_correct, second.clean_correct):
        raise ValueError("evaluations to merge must be on the same points")
    rows = [o for o in first.outcomes + second.outcomes if o.attack != WORST_CASE]
    return Evaluation(first.clean_correct, rows + worst_case(rows), {**first.adversarials, **second.adversarials})
