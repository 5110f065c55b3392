"""The strong suite: AutoAttack's "standard" ensemble (Croce & Hein 2020, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks", section 5).

APGD-CE, then APGD-T (targeted DLR over the top-9 other classes), then FAB-T (targeted, 9
classes), then Square (5,000 queries), each only on the points the attacks before it left
unbroken, worst case per point over all (RobustBench's rule). The same four in Linf and in L2.
Together they cover the failure modes of a single attack: a saturated softmax (DLR is scale
invariant, FAB uses logit differences), a poorly chosen step size (APGD adapts it, FAB has
none), and masked or useless gradients (Square needs none).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from robustcli.attacks.apgd import APGD
from robustcli.attacks.base import Attack
from robustcli.attacks.evaluate import WORST_CASE, Evaluation, evaluate, worst_case
from robustcli.attacks.fab import FABTargeted
from robustcli.attacks.square import SquareL2, SquareLinf

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
    square = SquareLinf if norm == "linf" else SquareL2
    return [
        (APGD(norm=norm, loss="ce", steps=steps), list(eps)),
        (APGD(norm=norm, loss="dlr-targeted", steps=steps, target_classes=target_classes), list(eps)),
        (FABTargeted(norm=norm, steps=steps, target_classes=target_classes), list(eps)),
        (square(queries=queries), list(eps)),
    ]


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
