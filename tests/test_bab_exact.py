"""Branch and bound against exact answers on small random networks.

2-D inputs: a 401 x 401 grid gives the margin's minimum to within the network's Lipschitz
constant times the grid step, so a property shifted by a few percent of the margin's range either
way has a known answer. `holds` must never be returned where a grid point violates; `violated`
only with a point the model really violates; and with the margin clearly positive, both branch
and bound modes must prove it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustcli.certify import chain_bounds as cb
from robustcli.certify.bab import RoundClock, _primal_points, bab_refute
from robustcli.certify.domain_pool import worst_first
from robustcli.certify.input_bab import input_bab_refute


def _net(seed: int, width: int = 16, depth: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    d = 2
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, 3))
    return nn.Sequential(*layers).double().eval()


def _grid_min(model, C, d):
    g = torch.linspace(-1, 1, 401, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        m = model(pts) @ C.T + d
    return m.min(0).values, (m.max(0).values - m.min(0).values), pts, m


def _check_for(model, C, d):
    def check(x):
        with torch.no_grad():
            return (model(x.double()) @ C.T + d).squeeze(1) <= 0

    return check


def _box():
    return torch.full((1, 2), -1.0, dtype=torch.float64), torch.full((1, 2), 1.0, dtype=torch.float64)


ROW = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)  # the margin z_0 - z_1


def _shifted_properties(model):
    """(C, d, should_hold) for C z + d > 0 on the box: the grid minimum of z_0 - z_1 shifted by 3%
    of its range up (holds, with room to prove it) and down (a grid point violates)."""
    true_min, spread, _, _ = _grid_min(model, ROW, torch.zeros(1, dtype=torch.float64))
    for offset, should_hold in ((0.03, True), (-0.03, False)):
        yield ROW, -true_min + offset * spread, should_hold


def _assert_sound(out, should_hold, model, C, d, lo, hi):
    if should_hold:
        assert out.proved, out
        return
    assert not out.proved  # a grid point violates: no proof may exist
    assert out.reason == "counterexample", out
    x = out.counterexample.double().reshape(1, -1)
    assert bool(((x >= lo) & (x <= hi)).all())
    with torch.no_grad():
        assert float(model(x) @ C.T + d) <= 0  # the point really violates


SLOW = pytest.mark.slow


@pytest.mark.parametrize("seed", [0, 1] + [pytest.param(s, marks=SLOW) for s in range(2, 6)])
def test_input_split_agrees_with_the_grid(seed):
    """Input splitting (3 x 16 ReLUs): proves with 3% of the margin's range to spare, finds a real
    counterexample with 3% too little."""
    model = _net(seed)
    chain = cb.Chain.of(model, (2,))
    lo, hi = _box()
    for C, d, should_hold in _shifted_properties(model):
        out = input_bab_refute(chain, lo, hi, C[None], d[None], check=_check_for(model, C, d), deadline=None,
                               max_domains=200_000)
        _assert_sound(out, should_hold, model, C, d, lo, hi)


@pytest.mark.parametrize("refresh", [True, False])
@pytest.mark.parametrize("seed", [2] + [pytest.param(s, marks=SLOW) for s in (0, 1, 3)])
def test_relu_split_agrees_with_the_grid(seed, refresh):
    """ReLU splitting with beta-CROWN, FSB and exact closing of fully split domains (2 x 8 ReLUs),
    with and without refreshed intermediate bounds: complete, so it proves or finds a real
    counterexample."""
    model = _net(seed, width=8, depth=2)
    chain = cb.Chain.of(model, (2,))
    lo, hi = _box()
    for C, d, should_hold in _shifted_properties(model):
        inter = cb.crown_intermediate(chain, lo, hi)
        out = bab_refute(chain, lo, hi, C[None], d[None], inter, deadline=None, max_domains=20_000, batch=256,
                         check=_check_for(model, C, d), refresh=refresh)
        _assert_sound(out, should_hold, model, C, d, lo, hi)


def test_primal_points_attain_the_linear_bound():
    """The corner chosen for a domain attains the minimum of its linear bound over the box."""
    g = torch.Generator().manual_seed(0)
    lo, hi = -torch.rand(1, 5, generator=g, dtype=torch.float64), torch.rand(1, 5, generator=g, dtype=torch.float64)
    A = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    rows, domains = torch.tensor([0, 2, 1, 0]), torch.tensor([3, 1])
    x = _primal_points(lo, hi, A, rows, domains)
    a = A[domains, rows[domains]]
    c, r = (hi + lo) / 2, (hi - lo) / 2
    assert torch.allclose((a * x).sum(1), (a * c).sum(1) - (a.abs() * r).sum(1))
    assert bool(((x >= lo) & (x <= hi)).all())


def test_relu_split_search_returns_its_counterexample():
    """Between rounds the search runs from the worst domains' primal points, inside the box, and a
    counterexample it returns ends branch and bound."""
    model = _net(2, width=8, depth=2)
    chain = cb.Chain.of(model, (2,))
    lo, hi = _box()
    (_, _, _), (C, d, should_hold) = list(_shifted_properties(model))
    assert not should_hold
    calls = []

    def search(starts):
        calls.append(starts)
        assert bool(((starts >= lo) & (starts <= hi)).all())
        x = starts.clone().requires_grad_(True)  # a few signed-gradient steps on the margin
        for _ in range(30):
            m = (model(x) @ C.T + d).sum()
            (gx,) = torch.autograd.grad(m, x)
            x = torch.minimum(torch.maximum(x - 0.05 * gx.sign(), lo), hi).detach().requires_grad_(True)
        with torch.no_grad():
            bad = ((model(x) @ C.T + d) <= 0).squeeze(1)
        return x[bad][0].detach() if bool(bad.any()) else None

    inter = cb.crown_intermediate(chain, lo, hi)
    out = bab_refute(chain, lo, hi, C[None], d[None], inter, deadline=None, max_domains=20_000,
                     search=search, search_share=1.0)
    assert calls and out.reason == "counterexample"
    _assert_sound(out, False, model, C, d, lo, hi)


def test_input_bab_times_out_in_time():
    import time

    model = _net(0, width=64, depth=4)
    chain = cb.Chain.of(model, (2,))
    lo, hi = _box()
    C = ROW
    true_min, _, _, _ = _grid_min(model, C, torch.zeros(1, dtype=torch.float64))
    d = -true_min + 1e-9  # holds only by a hair: splitting cannot finish quickly
    t0 = time.monotonic()
    out = input_bab_refute(chain, lo, hi, C[None], d[None], deadline=time.monotonic() + 1.0)
    assert time.monotonic() - t0 < 2.0
    assert not out.proved or float((true_min + d)) > 0


def test_worst_first_takes_the_lowest_bounds_and_keeps_the_others():
    score = torch.tensor([0.5, -2.0, 3.0, -1.0, 0.0], dtype=torch.float64)
    order, rest = worst_first(score, 2)
    assert order.tolist() == [1, 3]
    assert rest.tolist() == [True, False, True, False, True]
    order, rest = worst_first(score, 10)  # a batch larger than the queue takes all of it
    assert sorted(order.tolist()) == list(range(5)) and not rest.any()


def test_round_clock_stops_for_the_domain_limit_and_the_deadline():
    import time

    assert RoundClock(None).stop_reason(done=10, max_domains=10) is None
    assert RoundClock(None).stop_reason(done=11, max_domains=10) == "limit"
    clock = RoundClock(time.monotonic() + 1.0)
    assert clock.stop_reason(done=0, max_domains=10) is None  # the first round starts
    time.sleep(0.6)  # a round of 0.6 s: another one would end after the deadline
    assert clock.stop_reason(done=0, max_domains=10) == "timeout"


def test_auto_sub_problem_bounds_reuse_first_then_refresh(monkeypatch):
    """`auto` gives the reuse phase its share of the time and starts again with refresh only when
    that phase runs out of time; a decided first phase is the answer."""
    import time

    from robustcli.certify import spec_verify
    from robustcli.certify.bab import BabOutcome

    calls = []

    def fake(*a, deadline, refresh, **kw):
        calls.append((refresh, deadline))
        return BabOutcome(False, 10, "timeout" if not refresh else "proved")

    monkeypatch.setattr(spec_verify, "bab_refute", fake)
    now = time.monotonic()
    out = spec_verify.relu_bab(None, None, None, None, None, None, now + 10.0, "auto")
    assert [c[0] for c in calls] == [False, True] and out.reason == "proved" and out.domains == 20
    assert calls[0][1] - now == pytest.approx(10.0 * spec_verify.REUSE_SHARE, abs=0.2)
    assert calls[1][1] == now + 10.0
    calls.clear()
    monkeypatch.setattr(spec_verify, "bab_refute", lambda *a, refresh, **kw: calls.append(refresh) or BabOutcome(True, 3, "proved"))
    assert spec_verify.relu_bab(None, None, None, None, None, None, now + 10.0, "auto").proved and calls == [False]
    calls.clear()
    spec_verify.relu_bab(None, None, None, None, None, None, now + 10.0, "reuse")
    spec_verify.relu_bab(None, None, None, None, None, None, None, "refresh")
    assert calls == [False, True]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_child_refresh_after_its_newest_split_layer_holds_for_points_meeting_the_splits(seed):
    """A child domain's intervals refreshed only after the layer of its newest split, from its
    parent's refreshed ones: up to that layer they are the parent's (the new neuron clamped), after
    it inside the parent's, and every sampled point meeting the child's splits lies inside them.
    (They need not equal a refresh of every layer from the root's: CROWN's adaptive lower slopes
    make a later bound non-monotone in the earlier intervals; both are sound.)"""
    model = _net(seed, width=12, depth=4)
    chain = cb.Chain.of(model, (2,))
    lo, hi = _box()
    root = cb.crown_intermediate(chain, lo, hi)
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(20_000, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():  # every ReLU input at the samples
        zs, h = [], x
        for block in chain.blocks[:-1]:
            for m in block:
                h = m(h)
            zs.append(h)
            h = torch.relu(h)
    L = len(root)
    checked = 0
    for trial in range(12):
        # the activation pattern of one sample on a few unstable neurons per layer (so the domain is
        # not empty); the child fixes one more neuron of layer k the same way
        p = int(torch.randint(len(x), (1,), generator=g))
        k = trial % (L - 1)
        picks = []
        for j in range(L):
            unstable = ((root[j][0][0] < 0) & (root[j][1][0] > 0)).nonzero().flatten()
            picks.append(unstable[torch.randperm(len(unstable), generator=g)].tolist())
        if not picks[k]:
            continue
        parent_sp = [torch.zeros(1, root[j][0].shape[1], dtype=torch.int8) for j in range(L)]
        for j in range(L):
            for n in picks[j][1:3]:
                parent_sp[j][0, n] = 1 if zs[j][p, n] >= 0 else -1
        child_sp = [s.clone() for s in parent_sp]
        n = picks[k][0]
        child_sp[k][0, n] = 1 if zs[k][p, n] >= 0 else -1
        parent = cb.crown_intermediate(chain, lo, hi, base=root, splits=parent_sp)
        child = cb.crown_intermediate(chain, lo, hi, base=parent, splits=child_sp, settled=torch.tensor([k]))
        meets = torch.ones(len(x), dtype=torch.bool)
        for j in range(L):
            s = child_sp[j][0]
            meets &= ((zs[j] >= 0) | (s <= 0)).all(1) & ((zs[j] <= 0) | (s >= 0)).all(1)
        assert bool(meets[p])
        for j in range(L):
            (pl, pu), (cl, cu) = parent[j], child[j]
            if j <= k:
                ql, qu = cb.clamp_split(pl, pu, child_sp[j])
                assert torch.equal(cl, ql) and torch.equal(cu, qu)
            else:
                assert bool((cl >= pl).all()) and bool((cu <= pu).all())
            z = zs[j][meets]
            assert bool((z >= cl[0] - 1e-9).all()) and bool((z <= cu[0] + 1e-9).all())
        checked += 1
    assert checked >= 8
