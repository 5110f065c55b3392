"""L2 attacks against a reference and against themselves: PGD-L2 and APGD-L2 no weaker than
foolbox's L2PGD on the same model, more iterations never weaker, and the L2 Square attack."""

from __future__ import annotations

import foolbox as fb
import pytest
import torch

from robustcli.attacks.apgd import APGD
from robustcli.attacks.evaluate import evaluate
from robustcli.attacks.pgd import PGDL2
from robustcli.attacks.square import SquareL2, SquareLinf, meta_pattern

from test_strong_attacks import NoGradients, check_adversarial

CPU = torch.device("cpu")
TOLERANCE = 0.01  # robust accuracy; 0.01 of the 360 digits test points is 3.6 points


def robust_accuracy(model, x, y, attack, eps) -> float:
    return evaluate(model, x, y, [(attack, [eps])], device=CPU, seed=0).outcomes[0].robust_accuracy


def foolbox_l2pgd(model, x, y, eps, **options) -> float:
    torch.manual_seed(0)  # foolbox draws its random start from torch's global generator
    fmodel = fb.PyTorchModel(model.eval(), bounds=(0, 1))
    _, _, success = fb.attacks.L2PGD(**options)(fmodel, x, fb.criteria.Misclassification(y), epsilons=eps)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    return (correct & ~success).float().mean().item()


@pytest.mark.parametrize("eps", [0.5, 0.75])
def test_pgd_l2_and_apgd_l2_no_weaker_than_foolbox_l2pgd(digits_mlp, digits_test, eps):
    x, y = digits_test.x, digits_test.y
    # foolbox's defaults (50 steps of 0.025 eps) and foolbox run with our PGD's schedule (40 of 2.5 eps / 40)
    references = {
        "foolbox default": foolbox_l2pgd(digits_mlp, x, y, eps),
        "foolbox 40 steps": foolbox_l2pgd(digits_mlp, x, y, eps, steps=40, rel_stepsize=2.5 / 40),
    }
    for attack in (PGDL2(steps=40), APGD(norm="l2", loss="ce", steps=40)):
        ours = robust_accuracy(digits_mlp, x, y, attack, eps)
        for label, theirs in references.items():
            assert ours <= theirs + TOLERANCE, (attack.name, ours, label, theirs)
    assert references["foolbox 40 steps"] < 0.8  # the budget breaks points: the comparison has teeth


@pytest.mark.parametrize(
    "make,budgets,eps,n",
    [
        (lambda k: PGDL2(steps=k), (5, 20, 100), 0.75, 360),
        (lambda k: APGD(norm="l2", loss="ce", steps=k), (5, 20, 100), 0.75, 360),
        (lambda k: APGD(norm="l2", loss="dlr", steps=k), (5, 20, 60), 0.75, 360),
        (lambda k: SquareL2(queries=k), (50, 200, 600), 1.0, 100),
        (lambda k: SquareLinf(queries=k), (50, 200, 600), 0.1, 100),
    ],
    ids=["pgd-l2", "apgd-ce-l2", "apgd-dlr-l2", "square-l2", "square"],
)
def test_more_iterations_never_weaker(digits_mlp, digits_test, make, budgets, eps, n):
    d = digits_test.head(n)
    curve = [robust_accuracy(digits_mlp, d.x, d.y, make(k), eps) for k in budgets]
    for fewer, more in zip(curve, curve[1:]):
        assert more <= fewer + TOLERANCE, (budgets, curve)
    assert curve[-1] < curve[0] or curve[0] == 0  # and the extra budget does buy something here


def test_square_l2_stays_on_the_sphere_and_needs_no_gradients(digits_mlp, digits_test):
    d = digits_test.head(100)
    x, y = d.x, d.y
    oracle = NoGradients(digits_mlp).eval()
    result = SquareL2(queries=300)(oracle, x, y, 1.0, generator=torch.Generator().manual_seed(0))
    check_adversarial(digits_mlp, x, y, result, 1.0, norm="l2")
    with torch.no_grad():
        clean = (digits_mlp(x).argmax(1) == y).float().mean().item()
    assert result.success.float().mean().item() > 0.5 * clean  # it breaks a real share of points


@pytest.mark.parametrize("s", [1, 3, 5, 8])
def test_meta_pattern(s):
    eta = meta_pattern(s)
    assert eta.shape == (s, s)
    assert eta.pow(2).sum().item() == pytest.approx(1.0, abs=1e-6)
    top, bottom = eta[: s // 2], eta[s // 2 :]
    assert (top > 0).all() and (bottom < 0).all()  # two halves of opposite sign
    assert bottom[(s - s // 2) // 2, s // 2] == bottom.min()  # each peaked at its centre
