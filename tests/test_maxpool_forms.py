"""Max pooling bounded with both relaxations (certify/maxpool_forms.py): DeepPoly's lines and CROWN
on the pooling's ReLU form, intervals intersected, larger bound per row."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from certify_nets import empirical_min, grid_points, node_values, predicted_margins
from onnx_helpers import vnnlib_box
from robustcli.certify import dag_bounds as db
from robustcli.certify import maxpool_forms as mf
from robustcli.certify.bounders import InputSet, build_bounder
from robustcli.certify.spec_verify import verify_property
from robustcli.certify.vnnlib import parse_vnnlib

POOLS = {"k2s2": lambda: nn.MaxPool2d(2), "k3s2p1": lambda: nn.MaxPool2d(3, 2, 1)}


def pool_net(pool: str, seed: int = 0) -> nn.Module:
    """Conv, ReLU, max pooling, a fully connected ReLU layer: the shape where the ReLU form pays."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), POOLS[pool](), nn.Flatten(), nn.Linear(64, 16),
                         nn.ReLU(), nn.Linear(16, 5)).double().eval()


def box_points(lo: torch.Tensor, hi: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """(k, B, ...) points of the boxes: a third corners, the rest uniform."""
    g = torch.Generator().manual_seed(seed)
    pts = lo + (hi - lo) * torch.rand(k, *lo.shape, generator=g, dtype=lo.dtype)
    c = k // 3
    pts[:c] = torch.where(torch.rand(c, *lo.shape, generator=g) < 0.5, lo, hi)
    return pts


def pgd_box_min(model: nn.Module, lo, hi, C, d, steps: int = 30) -> torch.Tensor:
    """(B, K) the smallest C f(x) + d projected gradient descent finds per row, from the centre."""
    B, K = C.shape[:2]
    lo_r, hi_r = lo.repeat_interleave(K, 0), hi.repeat_interleave(K, 0)
    rows = C.reshape(B * K, -1)
    x = ((lo_r + hi_r) / 2).clone().requires_grad_(True)
    step = (hi_r - lo_r) / 8
    for _ in range(steps):
        val = (model(x) * rows).sum()
        (g,) = torch.autograd.grad(val, x)
        x = torch.minimum(torch.maximum(x - step * g.sign(), lo_r), hi_r).detach().requires_grad_(True)
    with torch.no_grad():
        return (model(x) * rows).sum(1).reshape(B, K) + (0 if d is None else d)


def contained(bounds: dict, vals: list[torch.Tensor], tol: float = 1e-9) -> bool:
    for q, (l, u) in bounds.items():
        v = vals[q].reshape(vals[q].shape[0], *l.shape)
        if not bool(((v >= l.reshape(1, *l.shape) - tol) & (v <= u.reshape(1, *u.shape) + tol)).all()):
            return False
    return True


@pytest.mark.parametrize("pool", list(POOLS))
@pytest.mark.parametrize("norm,eps", [("box", 0.1), ("linf", 0.08), ("l2", 0.6)])
def test_both_forms_are_sound_and_no_looser_than_either_part(pool, norm, eps):
    model = pool_net(pool, 1)
    x = grid_points(3).double()
    g = torch.Generator().manual_seed(2)
    if norm == "box":
        width = eps * torch.rand(x.shape, generator=g, dtype=x.dtype)
        s = InputSet.box((x - width).clamp(0, 1), (x + 0.5 * width).clamp(0, 1))
        C = torch.randn(len(x), 4, 5, generator=g, dtype=x.dtype)
        d = torch.randn(len(x), 4, generator=g, dtype=x.dtype)
    else:
        s = InputSet.ball(x, eps, norm)
        C, d = predicted_margins(model, x).double(), None
    ball = s.l2_ball
    lo, hi = s.lower, s.upper
    dag = db.Dag.of(model, (1, 8, 8))
    forms = mf.TwoForms.of(dag)
    with torch.no_grad():
        both, tb = mf.crown_spec(forms, lo, hi, C, d, ball=ball)
        own = db.crown_spec(dag, lo, hi, C, d, tb.own, ball=ball)[0]
        relu_part = db.crown_spec(forms.relu, lo, hi, C, d, tb.relu, ball=ball)[0]
        relu_alone = db.crown_spec(forms.relu, lo, hi, C, d, ball=ball)[0]
    tight: dict = {}
    alpha = mf.alpha_crown_spec(forms, lo, hi, C, d, tb, iterations=6, stop_when_positive=False, ball=ball,
                                tightened_out=tight, relu_alpha="open")
    lows = {"both crown": both, "both alpha": alpha}
    for method in ("crown", "alpha-crown"):
        b = build_bounder(method, model, x[:2], alpha_iterations=6, norm=None if norm == "box" else norm)
        assert b.forms is not None
        lows[f"bounder {method}"] = b.lower(s, C, d).double()
    # every part and the whole, against sampled points, corners and PGD inside the set
    if norm == "box":
        pts = box_points(lo, hi, 300, 3)
        with torch.no_grad():
            sampled = torch.stack([torch.einsum("nsk,nk->ns", C, model(p)) + d for p in pts]).min(0).values
        found = torch.minimum(sampled, pgd_box_min(model, lo, hi, C, d))
    else:
        found = empirical_min(model, x, C, eps, norm)
    for name, low in lows.items():
        assert bool((low <= found + 1e-7).all()), f"{name} above a point of the set"
        assert bool(torch.isfinite(low).all())
    # the combination is at least each of its parts, alpha-CROWN at least CROWN
    assert bool((both >= own - 1e-12).all()) and bool((both >= relu_part - 1e-12).all())
    assert bool((alpha >= both - 1e-12).all())
    assert bool((lows["bounder alpha-crown"] >= lows["bounder crown"] - 1e-9).all())
    # intervals: the intersected ones are inside the DeepPoly form's own, and all hold at the points
    for q, (l, u) in tb.dag.items():
        assert bool((l >= tb.own[q][0]).all()) and bool((u <= tb.own[q][1]).all())
    pts = box_points(lo, hi, 200, 4).reshape(-1, 1, 8, 8) if norm == "box" else \
        torch.stack([x + (torch.rand(x.shape, generator=g, dtype=x.dtype) * 2 - 1) * (eps if norm == "linf" else eps / 8)
                     for _ in range(60)]).clamp(0, 1).reshape(-1, 1, 8, 8)
    B = len(x)
    with torch.no_grad():
        vd, vr = node_values(dag, pts), node_values(forms.relu, pts)
    per = lambda vals: [v.reshape(-1, B, v.shape[1]) for v in vals]  # noqa: E731  (k, B, n)
    vd, vr = per(vd), per(vr)
    for bounds, vals in ((tb.own, vd), (tb.dag, vd), (tb.relu, vr), (tight["dag"], vd), (tight["relu"], vr)):
        assert contained(bounds, vals)
    # the ReLU form gains over DeepPoly's lines on these nets
    if norm != "l2":
        assert float((both - own).max()) > 1e-3
    assert bool(torch.isfinite(relu_alone).all())


def threshold_property(lo: torch.Tensor, hi: torch.Tensor, j: int, c: float, n_out: int) -> str:
    """Violated iff output j reaches c somewhere in the box."""
    return vnnlib_box(lo.flatten().tolist(), hi.flatten().tolist(), 0, n_out, extra_outputs=f"(assert (>= Y_{j} {c!r}))")


def test_both_forms_prove_what_deeppoly_leaves_open_and_not_past_the_maximum():
    """An upper bound c on one output, halfway between the DeepPoly form's CROWN bound and both
    forms' bound: DeepPoly alone leaves it open, both prove it (the verifier's crown stage); c just
    below the largest output found in the box is never proved."""
    model = pool_net("k3s2p1", 3)
    x = grid_points(5, 1).double()
    lo, hi = (x - 0.06).clamp(0, 1), (x + 0.06).clamp(0, 1)
    dag = db.Dag.of(model, (1, 8, 8))
    forms = mf.TwoForms.of(dag)
    C = -torch.eye(5, dtype=torch.float64)  # lower bounds of -y_j: upper bounds of y_j
    with torch.no_grad():
        dp = -db.crown_spec(dag, lo, hi, C)[0][0]
        both = -mf.crown_spec(forms, lo, hi, C)[0][0]
    j = int((dp - both).argmax())
    assert float(dp[j] - both[j]) > 1e-3
    c = float((dp[j] + both[j]) / 2)
    with torch.no_grad():
        assert float(-db.crown_spec(dag, lo, hi, C[j : j + 1])[0]) >= c  # DeepPoly alone: open
    prop = parse_vnnlib(threshold_property(lo, hi, j, c, 5))
    res = verify_property(model.float(), prop, (1, 8, 8), methods=("attack", "ibp", "crown"), timeout=60)
    assert res.status == "holds" and res.method == "crown"
    model.double()
    pts = box_points(lo, hi, 400, 7).reshape(-1, 1, 8, 8)
    with torch.no_grad():
        top = float(model(pts)[:, j].max())
    top = max(top, -float(pgd_box_min(model, lo, hi, C[j : j + 1][None], None)))
    assert float(both[j]) >= top - 1e-9  # sound
    prop = parse_vnnlib(threshold_property(lo, hi, j, top - 1e-4, 5))
    res = verify_property(model.float(), prop, (1, 8, 8), methods=("attack", "ibp", "crown", "alpha-crown"), timeout=60)
    assert res.status != "holds"
    model.double()


def test_bounder_proves_more_margins_than_deeppoly_alone_and_only_recomputes_open_points():
    model = pool_net("k2s2", 2)
    x = grid_points(6, 6).double()
    spec = predicted_margins(model, x).double()
    eps = torch.tensor([0.06, 0.06, 0.1, 0.1, 0.1, 0.1], dtype=torch.float64)  # some points proved, some open
    s = InputSet.ball(x, eps, "linf")
    both_b = build_bounder("crown", model, x[:2])
    dp_b = build_bounder("crown", model, x[:2])
    dp_b.forms = None
    both, dp = both_b.lower(s, spec), dp_b.lower(s, spec)
    assert bool((both >= dp - 1e-12).all())
    proved = (dp > 0).all(1)
    assert bool(proved.any()) and bool((~proved).any())  # the case this test is about
    torch.testing.assert_close(both[proved], dp[proved], rtol=0, atol=0)  # proved points keep DeepPoly's bound
    assert int((both > 0).sum()) > int((dp > 0).sum())
    for e in (0.06, 0.1):
        at = eps == e
        assert bool((both[at] <= empirical_min(model, x[at], spec[at], e, "linf") + 1e-7).all())


def test_branch_and_bound_roots_start_from_alpha_crown_on_the_relu_form():
    """The ReLU-split stage on a max pooling graph starts from alpha-CROWN's intervals of the ReLU
    form (both relaxations): sound at sampled points, with fewer unstable ReLU inputs than the ReLU
    form's plain CROWN intervals (what it started from before)."""
    from robustcli.certify.spec_verify import _relu_form_roots

    model = pool_net("k2s2", 4)
    x = grid_points(8, 1).double()
    lo, hi = (x - 0.15).clamp(0, 1), (x + 0.15).clamp(0, 1)
    dag = db.Dag.of(model, (1, 8, 8))
    forms = mf.TwoForms.of(dag)
    with torch.no_grad():
        out = model(x)[0]
    label = int(out.argmax())
    C = torch.stack([torch.eye(5)[label] - torch.eye(5)[k] for k in range(5) if k != label]).double()
    d = torch.zeros(4, dtype=torch.float64)
    bounds: dict = {}
    roots = _relu_form_roots(forms, lo, hi, C, d, bounds, 0, 8, 0.0, None)
    plain = db.crown_intermediate(forms.relu, lo, hi)
    assert set(roots) == set(plain)
    unstable = lambda b: sum(int(((b[q][0] < 0) & (b[q][1] > 0)).sum()) for q in forms.relu.relu_inputs)  # noqa: E731
    assert unstable(roots) < unstable(plain)
    pts = box_points(lo, hi, 300, 9).reshape(-1, 1, 8, 8)
    with torch.no_grad():
        vals = node_values(forms.relu, pts)
    assert contained(roots, vals)


def residual_ceil_net() -> nn.Module:
    """A max pooling (3x3, stride 2, ceil_mode) after a residual add, then a ReLU."""
    from robustcli.core.nn import Residual

    torch.manual_seed(14)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1))),
                         nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(), nn.Flatten(), nn.Linear(64, 10)).double().eval()  # fmt: skip


@pytest.mark.parametrize("eps,pays", [(0.1, False), (0.03, True)])
def test_bounder_uses_the_relu_form_only_where_it_wins_a_row(eps, pays):
    """The dataset bounder bounds its first open points both ways once: where the ReLU form wins no
    open row (this net at eps 0.1) it keeps DeepPoly's bound exactly; where it wins, it uses it."""
    model = residual_ceil_net()
    x = grid_points(6, 6).double()
    spec = predicted_margins(model, x).double()
    s = InputSet.ball(x, eps, "linf")
    b = build_bounder("crown", model, x[:2])
    alone = build_bounder("crown", model, x[:2])
    alone.forms = None
    low, dp = b.lower(s, spec), alone.lower(s, spec)
    assert b.relu_form_pays is pays
    if pays:
        assert float((low - dp).max()) > 1e-6
    else:
        torch.testing.assert_close(low, dp, rtol=0, atol=0)
    assert bool((low <= empirical_min(model, x, spec, eps, "linf") + 1e-7).all())


def test_bounder_probe_past_its_time_keeps_deeppoly_alone(monkeypatch):
    """A probe that takes longer than its share (here: none) answers that the ReLU form does not
    pay, and the bound is DeepPoly's alone."""
    monkeypatch.setattr(mf, "PROBE_COST", 0.0)
    monkeypatch.setattr(mf, "PROBE_FLOOR_SECONDS", 0.0)
    model = residual_ceil_net()
    x = grid_points(6, 6).double()
    spec = predicted_margins(model, x).double()
    s = InputSet.ball(x, 0.03, "linf")  # where the ReLU form wins when given the time
    b = build_bounder("crown", model, x[:2])
    alone = build_bounder("crown", model, x[:2])
    alone.forms = None
    low = b.lower(s, spec)
    assert b.relu_form_pays is False
    torch.testing.assert_close(low, alone.lower(s, spec), rtol=0, atol=0)


def test_verifier_crown_stage_keeps_deeppoly_when_the_relu_form_runs_past_its_share(monkeypatch):
    """The crown stage gives the ReLU form at most PROBE_COST DeepPoly passes (here none): the
    property both forms prove stays open, answered `unknown` (no wrong answer, no timeout)."""
    monkeypatch.setattr(mf, "PROBE_COST", 0.0)
    monkeypatch.setattr(mf, "PROBE_FLOOR_SECONDS", 0.0)
    model = pool_net("k3s2p1", 3)
    x = grid_points(5, 1).double()
    lo, hi = (x - 0.06).clamp(0, 1), (x + 0.06).clamp(0, 1)
    dag = db.Dag.of(model, (1, 8, 8))
    C = -torch.eye(5, dtype=torch.float64)
    with torch.no_grad():
        dp = -db.crown_spec(dag, lo, hi, C)[0][0]
        both = -mf.crown_spec(mf.TwoForms.of(dag), lo, hi, C)[0][0]
    j = int((dp - both).argmax())
    prop = parse_vnnlib(threshold_property(lo, hi, j, float((dp[j] + both[j]) / 2), 5))
    res = verify_property(model.float(), prop, (1, 8, 8), methods=("attack", "ibp", "crown"), timeout=60)
    model.double()
    assert res.status == "unknown"
