"""Robust-accuracy evaluation: several attacks and budgets over a dataset, worst case per point.

A point counts as robust at (norm, eps) only if it is classified correctly and every attack (and
every restart) failed on it (RobustBench's rule). Points the model already gets wrong are not
attacked. With `only_unbroken=True` (AutoAttack's cascade), each attack runs only on the points
the attacks before it left unbroken at that (norm, eps); its row then reports the robust accuracy
after it and every attack above it (`cumulative=True`) and counts only the points it ran on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from torch import nn

from robustcli.attacks.base import Attack
from robustcli.attacks.traits import AttackTraits
from robustcli.core.nn import eval_mode

WORST_CASE = "worst-case"


@dataclass
class AttackOutcome:
    attack: str
    norm: str
    eps: float
    robust: torch.Tensor  # bool (N,): correct and not broken
    broken: torch.Tensor  # bool (N,): the attack succeeded within eps on a correctly classified point
    perturbation: torch.Tensor  # float (N,): size of the successful perturbation, nan elsewhere
    time_s: float
    attacked: int  # points attacked (correctly classified ones; in a cascade, those still unbroken)
    cumulative: bool = False  # robust = robust to this attack and every earlier one in the cascade
    traits: AttackTraits | None = None  # the attack's kind, for the diagnostics (None: a worst-case row)

    @property
    def robust_accuracy(self) -> float:
        return self.robust.float().mean().item() if len(self.robust) else math.nan

    @property
    def success_rate(self) -> float:
        return self.broken.sum().item() / self.attacked if self.attacked else 0.0

    @property
    def median_perturbation(self) -> float:
        p = self.perturbation[~torch.isnan(self.perturbation)]
        return p.median().item() if len(p) else math.nan

    @property
    def images_per_s(self) -> float:
        return self.attacked / self.time_s if self.time_s > 0 else math.inf

    def summary(self) -> dict:
        return {
            "attack": self.attack,
            "norm": self.norm,
            "eps": self.eps,
            "robust_accuracy": self.robust_accuracy,
            "success_rate": self.success_rate,
            "median_perturbation": None if math.isnan(self.median_perturbation) else self.median_perturbation,
            "time_s": self.time_s,
            "images_per_s": self.images_per_s,
            "attacked": self.attacked,
            "cumulative": self.cumulative,
        }


@dataclass
class Evaluation:
    clean_correct: torch.Tensor  # bool (N,)
    outcomes: list[AttackOutcome]
    adversarials: dict[str, torch.Tensor]  # "attack/norm/eps" -> x_adv (N, ...) on the CPU

    @property
    def clean_accuracy(self) -> float:
        return self.clean_correct.float().mean().item()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    with eval_mode(model):
        preds = [model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)  # an empty shard of a sharded run


def batch_generator(seed: int, start: int, device: torch.device) -> torch.Generator:
    """Random starts depend on the seed and the batch's first index only, so shards reproduce them."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + start)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[tuple[Attack, Sequence[float]]],
    *,
    device: torch.device,
    batch_size: int = 256,
    seed: int = 0,
    targets: torch.Tensor | None = None,
    keep_adversarials: bool = False,
    on_batch: Callable[[int], None] | None = None,
    only_unbroken: bool = False,
    offset: int = 0,
) -> Evaluation:
    """Run each attack at each of its budgets; add a worst-case row per (norm, eps) over attacks.

    `on_batch(n)` is called after each batch of each attack with the number of (point, budget) pairs done.
    `only_unbroken`: attack only the points no earlier attack broke at the same (norm, eps).
    `offset`: index of x[0] in the full data set when x is one shard of it (a multiple of
    `batch_size`); batch seeds use full-data indices, so shards merged with `merge_shards` equal
    one evaluation of the whole set.
    """
    if offset % batch_size:
        raise ValueError(f"offset {offset} must be a multiple of batch_size {batch_size}")
    n = len(y)
    clean_correct = predict(model, x, batch_size, device) == y
    outcomes: list[AttackOutcome] = []
    adversarials: dict[str, torch.Tensor] = {}
    broken_so_far: dict[tuple[str, float], torch.Tensor] = {}  # (norm, eps) -> bool (N,)
    for attack, eps_list in attacks:
        budgets = [None] if attack.minimization else list(eps_list)
        # sizes in the data's precision: a float64 model's attacks return float64 perturbations
        per_budget = {b: (torch.zeros(n, dtype=torch.bool), torch.full((n,), math.nan, dtype=x.dtype), x.clone())
                      for b in budgets}
        elapsed = {b: 0.0 for b in budgets}
        attacked_per_budget = {b: 0 for b in budgets}
        unbroken = {b: torch.ones(n, dtype=torch.bool) for b in budgets}
        if only_unbroken:
            for b in budgets:
                # a minimisation attack serves every eps: skip a point only if broken at all of them
                for_eps = [b] if b is not None else list(eps_list)
                prior = [broken_so_far.get((attack.norm, float(e)), torch.zeros(n, dtype=torch.bool)) for e in for_eps]
                if prior:
                    unbroken[b] = ~torch.stack(prior).all(0)
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            for b in budgets:
                todo = (clean_correct[sl] & unbroken[b][sl]).nonzero().squeeze(1) + start
                if len(todo) == 0:
                    continue
                attacked_per_budget[b] += len(todo)
                t0 = time.perf_counter()
                result = attack(
                    model,
                    x[todo].to(device),
                    y[todo].to(device),
                    b,
                    targets=None if targets is None else targets[todo].to(device),
                    generator=batch_generator(seed, offset + start, device),
                )
                elapsed[b] += time.perf_counter() - t0
                success, size, x_adv = per_budget[b]
                success[todo] = result.success.cpu()
                size[todo] = torch.where(result.success, result.perturbation, torch.nan).cpu()
                x_adv[todo] = result.x_adv.cpu()
            if on_batch is not None:
                on_batch(min(batch_size, n - start) * len(budgets))
        attacked = int(clean_correct.sum())
        for eps in eps_list:
            b = None if attack.minimization else eps
            success, size, x_adv = per_budget[b]
            broken = success & ~torch.isnan(size) & (torch.nan_to_num(size, nan=math.inf) <= eps + 1e-6)
            robust = clean_correct & ~broken
            if only_unbroken:
                before = broken_so_far.get((attack.norm, float(eps)), torch.zeros(n, dtype=torch.bool))
                broken &= ~before
                robust &= ~before
                broken_so_far[(attack.norm, float(eps))] = before | broken
            outcome = AttackOutcome(
                attack.name,
                attack.norm,
                float(eps),
                robust,
                broken,
                torch.where(broken, size, torch.nan),
                elapsed[b],
                attacked_per_budget[b] if only_unbroken else attacked,
                cumulative=only_unbroken,
                traits=attack.traits,
            )
            outcomes.append(outcome)
            if keep_adversarials:
                adversarials[f"{attack.name}/{attack.norm}/{eps:g}"] = torch.where(
                    broken.view(-1, *([1] * (x.dim() - 1))), x_adv, x
                )
    outcomes += worst_case(outcomes)
    return Evaluation(clean_correct, outcomes, adversarials)


def worst_case(outcomes: Sequence[AttackOutcome]) -> list[AttackOutcome]:
    """Per (norm, eps) with more than one attack: robust only where every attack failed."""
    groups: dict[tuple[str, float], list[AttackOutcome]] = {}
    for o in outcomes:
        groups.setdefault((o.norm, o.eps), []).append(o)
    rows = []
    for (norm, eps), group in groups.items():
        if len(group) < 2:
            continue
        robust = torch.stack([o.robust for o in group]).all(0)
        broken = torch.stack([o.broken for o in group]).any(0)
        sizes = torch.stack([o.perturbation for o in group])
        smallest = torch.nan_to_num(sizes, nan=math.inf).amin(0)
        rows.append(
            AttackOutcome(
                WORST_CASE,
                norm,
                eps,
                robust,
                broken,
                torch.where(broken, smallest, torch.nan),
                sum(o.time_s for o in group),
                group[0].attacked,
            )
        )
    return rows


def merge_shards(shards: Sequence[Evaluation]) -> Evaluation:
    """One evaluation from evaluations of consecutive shards of a data set (same attacks, in order).

    Per-point tensors are concatenated; points attacked add up; a row's time is the slowest
    shard's (shards run side by side), so images/s is the combined throughput.
    """
    first = shards[0]
    if len(shards) == 1:
        return first
    outcomes = [
        replace(
            rows[0],
            robust=torch.cat([o.robust for o in rows]),
            broken=torch.cat([o.broken for o in rows]),
            perturbation=torch.cat([o.perturbation for o in rows]),
            time_s=max(o.time_s for o in rows),
            attacked=sum(o.attacked for o in rows),
        )
        for rows in zip(*(s.outcomes for s in shards), strict=True)
    ]
    adversarials = {k: torch.cat([s.adversarials[k] for s in shards]) for k in first.adversarials}
    return Evaluation(torch.cat([s.clean_correct for s in shards]), outcomes, adversarials)
