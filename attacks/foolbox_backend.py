"""foolbox 3's implementation of the same attacks, so a user can cross-check a number."""

from __future__ import annotations

import torch

from robustcli.attacks.base import AttackProblem, FixedEpsilonAttack, MinimizationAttack
from robustcli.attacks.cw import CW_PRESETS
from robustcli.attacks.registry import attack_traits

# Our attacks that foolbox 3 implements too (by our registry name).
FOOLBOX_NAMES = ("fgsm", "pgd", "pgd-l2", "cw")


def _foolbox_attack(name: str, steps: int | None, options: dict):
    import foolbox as fb

    if name == "fgsm":
        return fb.attacks.FGSM()
    if name == "pgd":
        steps = steps or 40
        return fb.attacks.LinfPGD(steps=steps, rel_stepsize=2.5 / steps)
    if name == "pgd-l2":
        steps = steps or 40
        return fb.attacks.L2PGD(steps=steps, rel_stepsize=2.5 / steps)
    if name == "cw":
        given = {k: v for k, v in options.items() if v is not None and k in ("binary_search_steps", "initial_const")}
        cw = {**CW_PRESETS[options.get("preset") or "cheap"], **given, **({"steps": steps} if steps else {})}
        return fb.attacks.L2CarliniWagnerAttack(
            steps=int(cw["steps"]),
            binary_search_steps=int(cw["binary_search_steps"]),
            initial_const=cw["initial_const"],
            stepsize=cw["lr"],
            confidence=options.get("confidence") or 0.0,
        )
    raise KeyError(name)


class _FoolboxMixin:
    def __init__(self, name: str, norm: str, steps: int | None = None, restarts: int | None = None, **options):
        self.name = f"{name}[foolbox]"
        self.norm = norm
        self.traits = attack_traits(name)  # the same kind of attack as ours of that name
        self.restarts = restarts or 1
        self.fb_attack = _foolbox_attack(name, steps, options)

    def foolbox_run(self, problem: AttackProblem, eps: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        import foolbox as fb

        model, x, criterion, generator = problem.model, problem.x, problem.criterion, problem.generator
        fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=x.device)
        crit = (
            fb.criteria.TargetedMisclassification(criterion.targets)
            if criterion.targeted
            else fb.criteria.Misclassification(criterion.labels)
        )
        if generator is not None:  # foolbox draws random starts from torch's global generator
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=x.device)))
        x_adv, success = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            _, clipped, ok = self.fb_attack(fmodel, x, crit, epsilons=eps)
            new = ok & ~success
            x_adv[new] = clipped[new]
            success |= ok
        return x_adv, success


class FoolboxFixedEpsilon(_FoolboxMixin, FixedEpsilonAttack):
    def run_within(self, problem: AttackProblem, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        return self.foolbox_run(problem, eps)


class FoolboxMinimization(_FoolboxMixin, MinimizationAttack):
    def run(self, problem: AttackProblem) -> tuple[torch.Tensor, torch.Tensor]:
        return self.foolbox_run(problem, problem.eps)


def make_foolbox_attack(name: str, norm: str, minimization: bool, **options):
    cls = FoolboxMinimization if minimization else FoolboxFixedEpsilon
    return cls(name, norm, **options)
