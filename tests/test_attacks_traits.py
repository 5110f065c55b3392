"""Attack traits, the shared Lp-ball geometry and eval_mode: what diagnostics and trainers rely on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustcli.attacks.diagnostics import diagnose
from robustcli.attacks.evaluate import AttackOutcome, Evaluation
from robustcli.attacks.geometry import L2, LINF, LpBall
from robustcli.attacks.norms import flat_norm
from robustcli.attacks.registry import ATTACKS, accepted_options, attack_traits, make_attack
from robustcli.attacks.traits import LOSS_FAMILIES, AttackTraits
from robustcli.core.nn import eval_mode
from robustcli.defenses.distillation import PGDMarginLinf


def test_every_registered_attack_declares_its_kind():
    for name in ATTACKS:
        a = make_attack(name)
        t = a.traits
        assert t.loss in LOSS_FAMILIES and t.norm == a.norm and t.minimization == a.minimization, name
    assert attack_traits("fgsm").single_step and not attack_traits("pgd").single_step
    assert attack_traits("square").gradient_free and not attack_traits("apgd-ce").gradient_free
    assert attack_traits("cw").loss == "margin" and attack_traits("apgd-ce").loss == "ce"
    assert PGDMarginLinf().traits.loss == "margin"


def test_names_as_autoattack_uses_them():
    # apgd-dlr is the untargeted DLR attack, apgd-t the targeted one; no name means the old targeted apgd-dlr
    for suffix, norm in (("", "linf"), ("-l2", "l2")):
        dlr, t = make_attack(f"apgd-dlr{suffix}"), make_attack(f"apgd-t{suffix}")
        assert (dlr.loss, dlr.name, dlr.traits.targeted, dlr.norm) == ("dlr", f"apgd-dlr{suffix}", False, norm)
        assert (t.loss, t.name, t.traits.targeted, t.norm) == ("dlr-targeted", f"apgd-t{suffix}", True, norm)
        fab, square = make_attack(f"fab-t{suffix}"), make_attack(f"square{suffix}")
        assert fab.name == f"fab-t{suffix}" and fab.traits.targeted and fab.minimization and fab.norm == norm
        assert square.name == f"square{suffix}" and square.traits.gradient_free and square.norm == norm
    assert not any("untargeted" in name for name in ATTACKS)


def test_cli_passes_each_attack_only_its_options():
    given = {"steps": 7, "restarts": 2, "queries": 11, "confidence": 0.5, "binary_search_steps": 3}
    assert accepted_options("fgsm", given) == {}
    assert accepted_options("square", given) == {"queries": 11, "restarts": 2}
    assert set(accepted_options("cw", given)) == {"steps", "confidence", "binary_search_steps"}
    assert make_attack("square", **accepted_options("square", given)).queries == 11


def _row(attack: str, robust: list[bool], traits: AttackTraits | None) -> AttackOutcome:
    r = torch.tensor(robust)
    return AttackOutcome(attack, "linf", 0.1, r, ~r, torch.full((len(r),), float("nan")), 0.0, len(r), traits=traits)


def test_margin_check_reads_traits_so_a_defense_attack_counts():
    # pgd-margin lives in defenses/, not in the registry: its declared loss makes it a margin attack
    n = 20
    ce = _row("pgd", [True] * 15 + [False] * 5, make_attack("pgd").traits)
    margin = _row("pgd-margin", [True] * 2 + [False] * 18, PGDMarginLinf().traits)
    ev = Evaluation(torch.ones(n, dtype=torch.bool), [ce, margin], {})
    warn = [w for w in diagnose(ev) if w.code == "margin-stronger-than-ce"]
    assert len(warn) == 1 and warn[0].evidence["margin_attack"] == "pgd-margin"
    assert warn[0].evidence["points_broken_only_by_margin"] == 13
    # the same rows with a CE loss declared: no margin warning
    ce_twin = _row("pgd-margin", [True] * 2 + [False] * 18, make_attack("pgd").traits)
    assert not diagnose(Evaluation(torch.ones(n, dtype=torch.bool), [ce, ce_twin], {}))


def test_a_new_gradient_free_attack_is_checked_as_black_box():
    n = 20
    white = _row("pgd", [True] * 15 + [False] * 5, make_attack("pgd").traits)
    oracle = _row("my-random-search", [True] * 5 + [False] * 15, AttackTraits("margin", "linf", gradient_free=True))
    codes = {w.code for w in diagnose(Evaluation(torch.ones(n, dtype=torch.bool), [white, oracle], {}))}
    assert "black-box-stronger-than-white-box" in codes


def test_traits_reject_unknown_kinds():
    with pytest.raises(ValueError):
        AttackTraits("hinge", "linf")
    with pytest.raises(ValueError):
        AttackTraits("ce", "linf", options=("lr",))


@pytest.mark.parametrize("ball", [LINF, L2])
def test_ball_geometry(ball: LpBall):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 5, 5, generator=g)
    eps = 0.3
    inside = ball.uniform_in_ball(x, eps, g)
    assert (flat_norm(inside, ball.norm) <= eps + 1e-6).all()
    sphere = ball.on_sphere(x, eps, g)
    assert torch.allclose(flat_norm(sphere, ball.norm), torch.full((16,), eps), atol=1e-5)
    far = 10 * torch.randn(x.shape, generator=g)
    p = ball.project(far, eps)
    assert (flat_norm(p, ball.norm) <= eps + 1e-6).all()
    assert torch.allclose(ball.project(p, eps), p)  # a projection is idempotent
    assert torch.equal(ball.project(inside, eps), inside)  # and leaves points in the ball alone
    grad = torch.randn(x.shape, generator=g)
    d = ball.ascent_direction(grad)
    assert torch.allclose(flat_norm(d, ball.norm), torch.ones(16), atol=1e-5)
    # steepest ascent: no unit vector of this norm has a larger inner product with the gradient
    other = ball.on_sphere(x, 1.0, g)
    assert ((d * grad).flatten(1).sum(1) >= (other * grad).flatten(1).sum(1) - 1e-5).all()


def test_eval_mode_restores_the_mode_even_on_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
    with eval_mode(model):
        assert not model.training and not model[1].training
    assert model.training and model[1].training
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("boom")
    assert model.training
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training


def test_apgd_halving_returns_to_the_best_point_and_keeps_the_momentum():
    """At a checkpoint a stalled point's step halves, it jumps to x_best, and x_{k-1} is kept, so
    the next step's momentum is x_best - x_{k-1} (AutoAttack's code), not zero."""
    from robustcli.attacks.apgd import APGD

    g = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.rand(*shape, generator=g)

    n = 3
    state = {
        "x0": t(n, 4), "xk": t(n, 4), "xprev": t(n, 4), "grad": t(n, 4), "loss": torch.zeros(n),
        "xbest": t(n, 4), "gbest": t(n, 4), "lbest": torch.tensor([1.0, 1.0, 2.0]),
        "eta": torch.full((n,), 0.2), "ups": torch.tensor([0.0, 9.0, 9.0]),  # point 0 stalled
        "halved": torch.tensor([False, False, True]), "lbest_ckpt": torch.tensor([0.5, 1.0, 1.0]),
        "pos": torch.arange(n),
    }  # fmt: skip
    before = {k: v.clone() for k, v in state.items()}
    APGD(steps=10)._checkpoint(state, window=10)
    # point 0: too few increases; point 1: no improvement since the last checkpoint; point 2: improving
    assert state["halved"].tolist() == [True, True, False]
    assert torch.allclose(state["eta"], torch.tensor([0.1, 0.1, 0.2]))
    for i, halved in enumerate([True, True, False]):
        assert torch.equal(state["xk"][i], (before["xbest"] if halved else before["xk"])[i])
        assert torch.equal(state["grad"][i], (before["gbest"] if halved else before["grad"])[i])
    assert torch.equal(state["xprev"], before["xprev"])  # x_{k-1} kept for every point
    assert state["ups"].sum() == 0 and torch.equal(state["lbest_ckpt"], before["lbest"])
