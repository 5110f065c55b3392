"""Attack engines on small models: closed forms, constraints, monotonicity, targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustcli.attacks import FGSM, PGDL2, CarliniWagnerL2, PGDLinf
from robustcli.attacks.evaluate import evaluate
from robustcli.attacks.losses import margin
from robustcli.attacks.norms import flat_norm


@pytest.fixture(scope="module")
def linear_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()


def test_fgsm_on_linear_model_matches_closed_form(linear_model, digits_test):
    x, y = digits_test.x[:50], digits_test.y[:50]
    W = linear_model[1].weight
    with torch.no_grad():
        p = F.softmax(linear_model(x), 1)
        grad = (p - F.one_hot(y, 10).float()) @ W  # d CE / dx for logits W x + b
        expected = (x.flatten(1) + 0.1 * grad.sign()).clamp(0, 1).view_as(x)
    result = FGSM()(linear_model, x, y, 0.1)
    # FGSM stops early on points the clean input already fools; compare on the others.
    attacked = linear_model(x).argmax(1) == y
    assert torch.allclose(result.x_adv[attacked], expected[attacked], atol=1e-6)


@pytest.mark.parametrize("attack,eps", [(PGDLinf(steps=10), 0.1), (PGDL2(steps=10), 1.0)])
def test_pgd_stays_in_ball_and_box(digits_mlp, digits_test, attack, eps):
    x, y = digits_test.x[:100], digits_test.y[:100]
    result = attack(digits_mlp, x, y, eps, generator=torch.Generator().manual_seed(0))
    assert flat_norm(result.x_adv - x, attack.norm).max() <= eps + 1e-5
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    # Success claims are true: the model misclassifies every point reported broken.
    with torch.no_grad():
        pred = digits_mlp(result.x_adv).argmax(1)
    assert (pred[result.success] != y[result.success]).all()
    assert result.success.any()


def test_more_steps_never_raise_robust_accuracy(digits_mlp, digits_test):
    x, y = digits_test.x, digits_test.y
    accs = []
    for steps in (1, 5, 20):
        attack = PGDLinf(steps=steps, abs_stepsize=0.01)
        ev = evaluate(digits_mlp, x, y, [(attack, [0.05])], device=torch.device("cpu"), seed=3)
        accs.append(ev.outcomes[0].robust_accuracy)
    assert accs[0] >= accs[1] >= accs[2]
    assert accs[0] > accs[2]


def test_restarts_keep_worst_case(digits_mlp, digits_test):
    x, y = digits_test.x, digits_test.y
    one = evaluate(digits_mlp, x, y, [(PGDLinf(steps=5), [0.04])], device=torch.device("cpu"), seed=1)
    three = evaluate(digits_mlp, x, y, [(PGDLinf(steps=5, restarts=3), [0.04])], device=torch.device("cpu"), seed=1)
    # The first restart is the same run, so extra restarts can only break more points.
    assert not (three.outcomes[0].robust & ~one.outcomes[0].robust).any()


def test_cw_perturbations_smaller_than_pgd_l2_at_equal_success(digits_mlp, digits_test):
    x, y = digits_test.x[:120], digits_test.y[:120]
    cw = CarliniWagnerL2(steps=100)(digits_mlp, x, y)
    for eps in (0.3, 0.6, 1.0):
        pgd = PGDL2(steps=40)(digits_mlp, x, y, eps, generator=torch.Generator().manual_seed(0))
        # CW succeeding within eps at least as often as PGD-L2 means its perturbations are smaller.
        assert cw.success_at(eps).float().mean() >= pgd.success.float().mean() - 0.01


@pytest.mark.parametrize("attack,eps", [(PGDLinf(steps=20), 0.3), (CarliniWagnerL2(steps=100), None)])
def test_targeted_attacks_hit_their_target(digits_mlp, digits_test, attack, eps):
    x, y = digits_test.x[:60], digits_test.y[:60]
    targets = (y + 1) % 10
    result = attack(digits_mlp, x, y, eps, targets=targets, generator=torch.Generator().manual_seed(0))
    assert result.success.float().mean() > 0.8
    with torch.no_grad():
        pred = digits_mlp(result.x_adv).argmax(1)
    assert (pred[result.success] == targets[result.success]).all()


def test_attacks_leave_model_untouched(digits_mlp, digits_test):
    x, y = digits_test.x[:20], digits_test.y[:20]
    digits_mlp.zero_grad(set_to_none=True)
    digits_mlp.train()
    before = {k: v.clone() for k, v in digits_mlp.state_dict().items()}
    try:
        for attack in (FGSM(), PGDLinf(steps=3), CarliniWagnerL2(steps=5, binary_search_steps=1)):
            attack(digits_mlp, x, y, 0.1)
            assert digits_mlp.training  # mode restored, never switched
            assert all(p.grad is None for p in digits_mlp.parameters())
    finally:
        digits_mlp.eval()
    assert all(torch.equal(before[k], v) for k, v in digits_mlp.state_dict().items())


def test_margin_excludes_true_class_when_other_logits_negative():
    logits = torch.tensor([[5.0, -1.0, -2.0]])
    # max over wrong classes is -1, so the margin is 6 (torchattacks' (1-onehot) trick would say 5).
    assert margin(logits, torch.tensor([0])).item() == pytest.approx(6.0)


def test_negative_eps_is_rejected(digits_mlp, digits_test):
    with pytest.raises(ValueError):
        PGDLinf()(digits_mlp, digits_test.x[:2], digits_test.y[:2], -0.1)
