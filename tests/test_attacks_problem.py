"""The attack base classes: one problem object per run, the budget check in one place."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustcli.attacks.base import AttackProblem, Criterion, FixedEpsilonAttack, MinimizationAttack
from robustcli.attacks.registry import ATTACKS, accepted_options, make_attack


def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(4, 1, 4, 4)
    return model, x, model(x).argmax(1).detach()


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_fixed_epsilon_attack_refuses_a_problem_without_a_budget(name):
    attack = make_attack(name, **accepted_options(name, {"steps": 2, "queries": 2}))
    model, x, y = _tiny()
    if isinstance(attack, FixedEpsilonAttack):
        with pytest.raises(ValueError, match=f"{attack.name} needs an eps budget"):
            attack.run(AttackProblem(model, x, Criterion(y)))
        with pytest.raises(ValueError, match="needs an eps budget"):
            attack(model, x, y)
    else:
        assert isinstance(attack, MinimizationAttack)
        x_adv, success = attack.run(AttackProblem(model, x, Criterion(y)))  # a minimisation needs none
        assert x_adv.shape == x.shape and success.shape == (len(x),)


def test_call_and_run_on_the_same_problem_agree():
    """`__call__` is `run` on the problem it builds (eval mode, detached input), nothing more."""
    model, x, y = _tiny()
    attack = make_attack("pgd", steps=3)
    result = attack(model, x, y, 0.2, generator=torch.Generator().manual_seed(1))
    x_adv, success = attack.run(AttackProblem(model, x, Criterion(y), 0.2, torch.Generator().manual_seed(1)))
    assert torch.equal(result.x_adv, x_adv) and torch.equal(result.success, success)
