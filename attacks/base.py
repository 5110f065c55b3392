"""Base classes for attacks, after foolbox 3's split into fixed-epsilon and minimisation attacks.

A fixed-epsilon attack gets a budget eps and returns a point inside the eps ball. A minimisation
attack looks for the smallest adversarial perturbation it can find; `success_at(eps)` then tells
which points it broke within a budget, so one run serves every eps.

Attacks switch the model to eval mode for their run and restore its mode afterwards; they take
gradients with respect to the input only, so parameters and their `.grad` are never touched.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import nn

from robustcli.attacks.norms import flat_norm
from robustcli.attacks.traits import AttackTraits
from robustcli.core.nn import eval_mode

__all__ = [
    "Attack",
    "AttackProblem",
    "AttackResult",
    "Criterion",
    "FixedEpsilonAttack",
    "MinimizationAttack",
    "eval_mode",
    "input_gradient",
]


@dataclass
class AttackResult:
    x_adv: torch.Tensor  # adversarial inputs where found; elsewhere the attack's best try or the input
    success: torch.Tensor  # bool (N,): the criterion holds at x_adv
    norm: str

    @property
    def perturbation(self) -> torch.Tensor:
        """Per-point size of the perturbation in the attack's norm (0 where nothing was found)."""
        return self._size

    def __post_init__(self) -> None:
        self._size = torch.zeros(len(self.success), dtype=self.x_adv.dtype, device=self.x_adv.device)

    def with_clean(self, x: torch.Tensor) -> "AttackResult":
        self._size = flat_norm(self.x_adv - x, self.norm)
        return self

    def success_at(self, eps: float, tol: float = 1e-6) -> torch.Tensor:
        """Points broken within budget eps (a tiny tolerance absorbs float error in projections)."""
        return self.success & (self._size <= eps + tol)


class Criterion:
    """Untargeted (prediction != label) or targeted (prediction == target) misclassification."""

    def __init__(self, labels: torch.Tensor, targets: torch.Tensor | None = None):
        self.labels = labels
        self.targets = targets

    @property
    def targeted(self) -> bool:
        return self.targets is not None

    @property
    def attack_labels(self) -> torch.Tensor:
        """The labels a loss is computed against: the target when targeted, else the true label."""
        return self.targets if self.targets is not None else self.labels

    def __call__(self, logits: torch.Tensor, idx: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        pred = logits.argmax(1)
        if self.targets is not None:
            return pred == self.targets[idx]
        return pred != self.labels[idx]


@dataclass(frozen=True, eq=False)
class AttackProblem:
    """What one run of an attack solves: find x_adv near `x` (in [0, 1]) for which `criterion`
    holds on `model`'s logits, within budget `eps` (a fixed-epsilon attack needs it; a
    minimisation attack ignores it), drawing random numbers from `generator` only.

    One object instead of five positional arguments, so every attack's `run` has the same short
    signature (foolbox 3 passes model, inputs and criterion the same way). `Attack.__call__`
    builds it with the model already in eval mode and `x` detached.
    """

    model: nn.Module
    x: torch.Tensor
    criterion: Criterion
    eps: float | None = None
    generator: torch.Generator | None = None


def input_gradient(model: nn.Module, x: torch.Tensor, loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, d sum(loss) / dx) in one forward and one backward pass."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    grad = torch.autograd.grad(loss_fn(logits).sum(), x)[0]
    return logits.detach(), grad


def search_unbroken(
    x_adv: torch.Tensor,
    success: torch.Tensor,
    restarts: int,
    search: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """Restarts: up to `restarts` runs of `search(idx)`, each on the points no run has broken yet.

    `search` gets the indices still unbroken and returns (found, adversarial points) for them;
    found points are written into `x_adv` and `success` in place. Stops once every point is broken.
    """
    for _ in range(restarts):
        idx = (~success).nonzero().squeeze(1)
        if len(idx) == 0:
            return
        found, xa = search(idx)
        x_adv[idx[found]] = xa[found]
        success[idx[found]] = True


def top_other_classes(model: nn.Module, x: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Targets for targeted runs without user targets: the k highest-scoring classes after the top
    one, one (N,) tensor per rank, as AutoAttack's APGD-T and FAB-T choose them."""
    with torch.no_grad():
        order = model(x).argsort(1, descending=True)
    return [order[:, r] for r in range(1, min(k, order.shape[1] - 1) + 1)]


class Attack(ABC):
    """An attack on a classifier that maps [0, 1] inputs to logits (N, classes)."""

    name: ClassVar[str]
    norm: ClassVar[str]  # "linf" or "l2": the norm in which perturbations are measured
    # What kind of attack this is (loss family, gradient-free, single-step, ...): a class
    # attribute or a property; diagnostics and the CLI classify attacks by it, never by name.
    traits: AttackTraits

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float | None = None,
        *,
        targets: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> AttackResult:
        if eps is not None and eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        problem = AttackProblem(model, x.detach(), Criterion(y, targets), eps, generator)
        with eval_mode(model), torch.enable_grad():
            x_adv, success = self.run(problem)
        return AttackResult(x_adv.detach(), success, self.norm).with_clean(x)

    @abstractmethod
    def run(self, problem: AttackProblem) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (x_adv, success)."""


class FixedEpsilonAttack(Attack):
    """Finds an adversarial point within a given budget eps (required).

    `run` refuses a problem without a budget, then hands the budget, now a plain float, to
    `run_within`, which a subclass implements.
    """

    minimization: ClassVar[bool] = False

    def run(self, problem: AttackProblem) -> tuple[torch.Tensor, torch.Tensor]:
        if problem.eps is None:
            raise ValueError(f"{self.name} needs an eps budget")
        return self.run_within(problem, problem.eps)

    @abstractmethod
    def run_within(self, problem: AttackProblem, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (x_adv, success), every x_adv within `eps` of `problem.x` in the attack's norm."""


class MinimizationAttack(Attack):
    """Looks for the smallest adversarial perturbation; eps, if given, is ignored by the search."""

    minimization: ClassVar[bool] = True
