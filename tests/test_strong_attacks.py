"""Engines of issue #5: APGD, DLR, Square, the strong-suite cascade, gradient-masking diagnostics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustcli.attacks.apgd import APGD, checkpoint_lengths
from robustcli.attacks.base import AttackProblem, Criterion
from robustcli.attacks.diagnostics import diagnose, run_diagnostics
from robustcli.attacks.evaluate import WORST_CASE, AttackOutcome, Evaluation, evaluate
from robustcli.attacks.fab import FABTargeted
from robustcli.attacks.fgsm import FGSM
from robustcli.attacks.losses import dlr, dlr_targeted
from robustcli.attacks.pgd import PGDLinf
from robustcli.attacks.registry import make_attack
from robustcli.attacks.square import SquareLinf, square_fraction
from robustcli.attacks.suite import merge_evaluations, run_strong_suite

from masking_models import ScaledLogits

CPU = torch.device("cpu")


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("this model has no gradients")


class NoGradients(nn.Module):
    """A model whose backward raises and whose forward runs under no_grad (a score-only oracle)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return _NoBackward.apply(self.model(x))


@pytest.fixture(scope="module")
def points(digits_test):
    d = digits_test.head(100)
    return d.x, d.y


def robust(model, x, y, attack, eps, seed=0):
    ev = evaluate(model, x, y, [(attack, [eps])], device=CPU, seed=seed)
    return ev.outcomes[0].robust


def check_adversarial(model, x, y, result, eps, norm="linf"):
    """Every claimed success is misclassified, inside the ball and the box."""
    with torch.no_grad():
        pred = model(result.x_adv).argmax(1)
    assert (pred[result.success] != y[result.success]).all()
    size = (result.x_adv - x).flatten(1).abs().amax(1) if norm == "linf" else (result.x_adv - x).flatten(1).norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1


def test_checkpoints_follow_the_paper():
    # p_1 = 0.22, then windows 0.03 N shorter, at least 0.06 N (Croce & Hein 2020, section 3.2)
    assert checkpoint_lengths(100)[:8] == [22, 19, 16, 13, 10, 7, 6, 6]
    assert sum(checkpoint_lengths(100)) >= 100
    assert sum(checkpoint_lengths(7)) >= 7


def test_dlr_is_scale_and_shift_invariant():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(32, 10, generator=g)
    y = torch.randint(0, 10, (32,), generator=g)
    t = (y + 1) % 10
    assert torch.allclose(dlr(z, y), dlr(1e4 * z + 3, y), atol=1e-4)
    assert torch.allclose(dlr_targeted(z, y, t), dlr_targeted(1e4 * z - 7, y, t), atol=1e-4)
    # negative while the true class wins, positive once another class wins
    winner = z.argmax(1)
    assert (dlr(z, winner) < 0).all()
    assert (dlr(z, (winner + 1) % 10) > 0).all()


@pytest.mark.parametrize("loss", ["ce", "dlr-targeted"])
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_apgd_finds_valid_adversarials_at_least_as_often_as_pgd(digits_mlp, points, norm, eps, loss):
    x, y = points
    apgd = APGD(norm=norm, loss=loss, steps=30)
    result = apgd(digits_mlp, x, y, eps, generator=torch.Generator().manual_seed(0))
    check_adversarial(digits_mlp, x, y, result, eps, norm)
    with torch.no_grad():
        correct = digits_mlp(x).argmax(1) == y
    pgd = make_attack("pgd" if norm == "linf" else "pgd-l2", steps=30)
    ra_apgd = (correct & ~result.success).float().mean().item()
    ra_pgd = robust(digits_mlp, x, y, pgd, eps).float().mean().item()
    assert ra_apgd <= ra_pgd + 0.02, (ra_apgd, ra_pgd)
    assert ra_apgd < 0.9  # it does break points at this budget


def test_square_fraction_schedule():
    assert square_fraction(0, 10_000) == 0.8
    assert square_fraction(11, 10_000) == pytest.approx(0.4)
    assert square_fraction(8001, 10_000) == pytest.approx(0.8 / 512)
    assert square_fraction(2500, 5000) == pytest.approx(0.8 / 128)  # rescaled to the budget


def test_square_needs_no_gradients(digits_mlp, points):
    x, y = points
    oracle = NoGradients(digits_mlp).eval()
    with pytest.raises(RuntimeError):  # gradient attacks cannot run on it
        PGDLinf(steps=2)(oracle, x[:4], y[:4], 0.1)
    result = SquareLinf(queries=300)(oracle, x, y, 0.1, generator=torch.Generator().manual_seed(0))
    check_adversarial(digits_mlp, x, y, result, 0.1)
    with torch.no_grad():
        clean = (digits_mlp(x).argmax(1) == y).float().mean().item()
    assert result.success.float().mean().item() > 0.2 * clean  # it breaks a real share of points


def test_apgd_targeted_by_user_reaches_the_target(digits_mlp, points):
    x, y = points
    t = (y + 3) % 10
    result = APGD(loss="dlr-targeted", steps=30)(digits_mlp, x, y, 0.2, targets=t, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pred = digits_mlp(result.x_adv).argmax(1)
    assert result.success.any()
    assert (pred[result.success] == t[result.success]).all()


def test_suite_is_no_more_robust_than_any_single_attack_point_by_point(digits_mlp, points):
    x, y = points
    eps = [0.1]  # several budgets in one cascade: tests/test_strong_cli.py (example config)
    suite = run_strong_suite(digits_mlp, x, y, eps, device=CPU, queries=200, steps=30)
    singles = [APGD(loss="ce", steps=30), APGD(loss="dlr-targeted", steps=30), FABTargeted(steps=30), SquareLinf(queries=200)]
    for e in eps:
        worst = next(o for o in suite.outcomes if o.attack == WORST_CASE and o.eps == e)
        for attack in singles:
            alone = robust(digits_mlp, x, y, attack, e)
            assert not (worst.robust & ~alone).any(), f"suite left robust a point {attack.name} broke at eps {e}"
        # the cascade attacked fewer points with each attack, never re-attacking a broken one
        rows = [o for o in suite.outcomes if o.eps == e and o.attack != WORST_CASE]
        assert [o.attack for o in rows] == ["apgd-ce", "apgd-t", "fab-t", "square"]
        assert rows[0].attacked >= rows[1].attacked >= rows[2].attacked >= rows[3].attacked
        assert rows[1].attacked == int(rows[0].robust.sum())
        assert worst.robust.equal(rows[-1].robust)


def test_saturated_softmax_fools_ce_pgd_but_not_the_suite(digits_mlp, points):
    x, y = points
    eps = 0.1
    plain = digits_mlp
    saturated = ScaledLogits(digits_mlp, 1e4).eval()
    pgd_plain = robust(plain, x, y, PGDLinf(steps=20), eps).float().mean().item()
    pgd_sat = robust(saturated, x, y, PGDLinf(steps=20), eps).float().mean().item()
    assert pgd_sat > pgd_plain + 0.3  # CE-PGD reports a robustness that is not there

    def strong(model):
        ev = evaluate(model, x, y, [(FGSM(), [eps]), (PGDLinf(steps=20), [eps])], device=CPU)
        return merge_evaluations(ev, run_strong_suite(model, x, y, [eps], device=CPU, queries=200, steps=30))

    ev_sat, ev_plain = strong(saturated), strong(plain)
    worst = lambda ev: next(o for o in ev.outcomes if o.attack == WORST_CASE).robust_accuracy  # noqa: E731
    assert worst(ev_sat) <= worst(ev_plain) + 0.03  # near the true value, found by DLR / Square
    assert worst(ev_sat) < pgd_sat - 0.3

    warnings = diagnose(ev_sat, saturated, x, y)
    codes = {w.code for w in warnings}
    assert {"margin-stronger-than-ce", "vanishing-gradients", "large-eps-not-broken"} <= codes
    warn = next(w for w in warnings if w.code == "margin-stronger-than-ce")
    assert warn.evidence["points_broken_only_by_margin"] > 0.3 * len(y) and warn.advice
    assert diagnose(ev_plain, plain, x, y) == []


def test_cw_also_exposes_the_saturated_model(digits_mlp, points):
    x, y = points
    saturated = ScaledLogits(digits_mlp, 1e4).eval()
    ev = evaluate(saturated, x[:80], y[:80], [(make_attack("pgd-l2", steps=20), [1.0]), (make_attack("cw", steps=50), [1.0])], device=CPU)
    pgd, cw = ev.outcomes[0], ev.outcomes[1]
    assert cw.robust_accuracy < pgd.robust_accuracy - 0.3
    assert "margin-stronger-than-ce" in {w.code for w in diagnose(ev)}


def _outcome(attack: str, eps: float, robust: list[bool], correct: list[bool], cumulative=False) -> AttackOutcome:
    r, c = torch.tensor(robust), torch.tensor(correct)
    return AttackOutcome(attack, "linf", eps, r, c & ~r, torch.full((len(r),), float("nan")), 0.0, int(c.sum()), cumulative)


def test_diagnostics_flag_weak_iterative_black_box_and_non_monotone_curves():
    n = 20
    correct = [True] * n
    many = [True] * 15 + [False] * 5
    few = [True] * 5 + [False] * 15
    rows = [
        _outcome("fgsm", 0.1, few, correct),
        _outcome("pgd", 0.1, many, correct),  # iterative weaker than single step
        _outcome("pgd", 0.2, [True] * n, correct),  # robust accuracy rises with eps
        _outcome("apgd-ce", 0.3, many, correct),
        _outcome("square", 0.3, few, correct),  # black box breaks what white box did not
    ]
    ev = Evaluation(torch.tensor(correct), rows, {})
    diag = run_diagnostics(ev)
    codes = {w.code for w in diag.warnings}
    assert codes == {"iterative-weaker-than-single-step", "not-monotone-in-eps", "black-box-stronger-than-white-box"}
    for w in diag.warnings:
        assert w.message and w.advice and w.evidence
    iterative = next(w for w in diag.warnings if w.code == "iterative-weaker-than-single-step")
    assert iterative.evidence["robust_accuracy_iterative"] == 0.75
    assert iterative.evidence["robust_accuracy_single_step"] == 0.25
    # the probes say why they did not run
    skipped = {c.code: c.ran_on for c in diag.checks if c.status == "skipped"}
    assert "model" in skipped["vanishing-gradients"] and "model" in skipped["large-eps-not-broken"]


def test_diagnostics_tolerate_noise():
    n = 200
    correct = [True] * n
    rows = [
        _outcome("fgsm", 0.1, [True] * 100 + [False] * 100, correct),
        _outcome("pgd", 0.1, [True] * 101 + [False] * 99, correct),  # one point: noise, not masking
        _outcome("pgd", 0.2, [True] * 102 + [False] * 98, correct),
    ]
    assert diagnose(Evaluation(torch.tensor(correct), rows, {})) == []


def test_criterion_success_semantics_of_apgd_t():
    """APGD-T over top classes counts any misclassification as success (as AutoAttack)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 5))
    x = torch.rand(8, 1, 2, 2)
    y = model(x).argmax(1)
    x_adv, success = APGD(loss="dlr-targeted", steps=10, target_classes=20).run(
        AttackProblem(model.eval(), x, Criterion(y), 1.0, None)
    )
    with torch.no_grad():
        assert (model(x_adv).argmax(1)[success] != y[success]).all()
    assert success.all()  # eps 1 covers the whole box of a linear model's input


def test_dlr_losses_equal_the_papers_formulas_on_a_worked_example():
    """Croce & Hein 2020, eqs. 3-4, by hand: logits sorted 9 > 7 > 4 > 2 > 1 > 0."""
    z = torch.tensor([[4.0, 9.0, 0.0, 2.0, 7.0, 1.0]], dtype=torch.float64)
    y, t = torch.tensor([0]), torch.tensor([3])
    # untargeted: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3) = -(4 - 9) / (9 - 4)
    assert dlr(z, y).item() == pytest.approx(1.0, abs=1e-9)
    assert dlr(z, torch.tensor([1])).item() == pytest.approx(-(9 - 7) / (9 - 4), abs=1e-9)
    # targeted: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) = -(4 - 2) / (9 - (4 + 2) / 2)
    assert dlr_targeted(z, y, t).item() == pytest.approx(-2 / 6, abs=1e-9)
