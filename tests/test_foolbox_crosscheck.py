"""Our attacks against foolbox 3 on the same trained model and data."""

from __future__ import annotations

import foolbox as fb
import torch

from robustcli.attacks import CarliniWagnerL2, PGDLinf
from robustcli.attacks.evaluate import evaluate


def test_pgd_robust_accuracy_not_above_foolbox(digits_mlp, digits_test):
    x, y = digits_test.x, digits_test.y
    eps = 0.05
    ours = evaluate(digits_mlp, x, y, [(PGDLinf(steps=40), [eps])], device=torch.device("cpu"), seed=0)
    torch.manual_seed(0)
    fmodel = fb.PyTorchModel(digits_mlp.eval(), bounds=(0, 1))
    _, _, success = fb.attacks.LinfPGD(steps=40)(fmodel, x, fb.criteria.Misclassification(y), epsilons=eps)
    theirs = (~success).float().mean().item()
    assert ours.outcomes[0].robust_accuracy <= theirs + 0.01


def test_cw_median_l2_not_above_foolbox(digits_mlp, digits_test):
    x, y = digits_test.x[:100], digits_test.y[:100]
    correct = digits_mlp(x).argmax(1) == y
    x, y = x[correct], y[correct]
    ours = CarliniWagnerL2(steps=100, binary_search_steps=5, initial_const=1e-2)(digits_mlp, x, y)
    fmodel = fb.PyTorchModel(digits_mlp.eval(), bounds=(0, 1))
    attack = fb.attacks.L2CarliniWagnerAttack(steps=100, binary_search_steps=5, initial_const=1e-2)
    _, adv, success = attack(fmodel, x, fb.criteria.Misclassification(y), epsilons=None)
    theirs = (adv - x).flatten(1).norm(dim=1)[success]
    assert ours.success.float().mean() >= success.float().mean() - 0.01
    assert ours.perturbation[ours.success].median() <= theirs.median()
