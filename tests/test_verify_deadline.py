"""The verifier's timeout holds inside bound computations too: CROWN rows stop at the deadline
(certify/deadline.py) and the answer is `timeout`; the first attack leaves the bound stages most of
the budget; alpha-CROWN on layers too wide for per-neuron slopes optimises the specification's
slopes only, still soundly."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from onnx_helpers import vnnlib_box
from robustcli.certify import chain_bounds as cb
from robustcli.certify import spec_verify
from robustcli.certify.deadline import DeadlineReached
from robustcli.certify.spec_verify import verify_property
from robustcli.certify.vnnlib import parse_vnnlib


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)).eval()


def _hard_box(model: nn.Module, eps: float = 0.3):
    x = torch.full((6,), 0.5)
    with torch.no_grad():
        y = int(model(x[None]).argmax())
    return parse_vnnlib(vnnlib_box((x - eps).tolist(), (x + eps).tolist(), y, 3)), x


def test_crown_rows_stop_at_a_passed_deadline():
    model = _mlp()
    chain = cb.Chain.of(model, (6,))
    lo, hi = torch.zeros(1, 6, dtype=torch.float64), torch.ones(1, 6, dtype=torch.float64)
    assert bool(((cb.ibp_intermediate(chain, lo, hi)[1][0] < 0) & (cb.ibp_intermediate(chain, lo, hi)[1][1] > 0)).any())
    with pytest.raises(DeadlineReached):
        cb.crown_intermediate(chain, lo, hi, deadline=time.monotonic() - 1)
    assert len(cb.crown_intermediate(chain, lo, hi, deadline=time.monotonic() + 60)) == 2  # in time: bounds


def _slow_rows(monkeypatch, engine, one_pass: str) -> None:
    """Each part of the engine's CROWN rows takes 0.4 s more (a large CNN on a CPU), in many small
    parts, so the clock is read often."""
    rows = getattr(engine, one_pass)

    def slow(*args, **kwargs):
        time.sleep(0.4)
        return rows(*args, **kwargs)

    monkeypatch.setattr(engine, one_pass, slow)
    monkeypatch.setattr(engine, "_GROUP_ELEMENTS", 64)


def test_a_slow_crown_stage_answers_timeout_near_the_deadline(monkeypatch):
    """CROWN rows that take 0.4 s per part (a large CNN on a CPU) cannot run past a 1 s timeout:
    the answer comes within 1 s of it (the issue's bound: 1 s or 5%, whichever is larger)."""
    _slow_rows(monkeypatch, cb, "_rows_lower")
    model = _mlp()
    prop, _ = _hard_box(model)
    t0 = time.monotonic()
    res = verify_property(model, prop, (6,), methods=("crown",), timeout=1.0)
    assert res.status == "timeout"
    assert time.monotonic() - t0 < 2.0
    assert res.stages[-1]["note"] == "stopped at the deadline"


def test_first_attack_leaves_most_of_the_time_to_the_bound_stages(monkeypatch):
    seen = []
    pgd = spec_verify.spec_pgd

    def recording(*args, deadline=None, **kwargs):
        seen.append(deadline)
        return pgd(*args, deadline=deadline, **kwargs)

    monkeypatch.setattr(spec_verify, "spec_pgd", recording)
    model = _mlp()
    prop, _ = _hard_box(model, eps=0.01)
    t0 = time.monotonic()
    verify_property(model, prop, (6,), methods=("attack", "ibp"), timeout=8.0)
    assert seen and seen[0] <= t0 + spec_verify.ATTACK_SHARE * 8.0 + 0.5
    seen.clear()
    t0 = time.monotonic()
    verify_property(model, prop, (6,), methods=("attack",), timeout=8.0)  # the attack alone: all of it
    assert seen[0] >= t0 + 7.5


def test_alpha_crown_without_intermediate_slopes_is_sound_and_no_looser_than_crown(monkeypatch):
    model = _mlp(1).double()
    chain = cb.Chain.of(model, (6,))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 6, generator=g, dtype=torch.float64)
    lo, hi = (x - 0.2).clamp(0, 1), (x + 0.2).clamp(0, 1)
    C = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
    d = torch.zeros(2, dtype=torch.float64)
    crown, inter = cb.crown_spec(chain, lo, hi, C, d)
    full = cb.alpha_crown_spec(chain, lo, hi, C, d, inter, iterations=10, stop_when_positive=False)
    monkeypatch.setattr(cb, "ALPHA_ELEMENTS", 0)  # as if the layers were too wide
    spec_only = cb.alpha_crown_spec(chain, lo, hi, C, d, inter, iterations=10, stop_when_positive=False)
    assert bool((spec_only >= crown - 1e-9).all())
    assert bool((spec_only > crown + 1e-6).any())  # the specification's slopes were optimised
    assert bool((full >= crown - 1e-9).all())
    pts = lo[:, None] + (hi - lo)[:, None] * torch.rand(4, 2000, 6, generator=g, dtype=torch.float64)
    with torch.no_grad():
        vals = torch.einsum("kc,bnc->bnk", C, model(pts.reshape(-1, 6)).reshape(4, 2000, 3))
    assert bool((spec_only[:, None] <= vals + 1e-9).all())


# -- the graph engine (certify/dag_bounds.py) --------------------------------------------------------
def _residual_mlp(seed: int = 0) -> nn.Module:
    from robustcli.core.nn import Residual

    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), Residual(nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32))),
                         nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)).eval()  # fmt: skip


def test_graph_crown_rows_stop_at_a_passed_deadline():
    from robustcli.certify import dag_bounds as db

    dag = db.Dag.of(_residual_mlp(), (6,))
    lo, hi = torch.zeros(1, 6, dtype=torch.float64), torch.ones(1, 6, dtype=torch.float64)
    with pytest.raises(DeadlineReached):
        db.crown_intermediate(dag, lo, hi, deadline=time.monotonic() - 1)
    C = torch.eye(3, dtype=torch.float64)
    with pytest.raises(DeadlineReached):
        db.crown_spec(dag, lo, hi, C, deadline=time.monotonic() - 1)
    assert set(db.crown_intermediate(dag, lo, hi, deadline=time.monotonic() + 60)) == set(dag.pre)


def test_a_slow_graph_crown_stage_answers_timeout_near_the_deadline(monkeypatch):
    """Graph CROWN rows that take 0.4 s per part cannot run past a 1 s timeout: `timeout` within 1 s."""
    from robustcli.certify import dag_bounds as db

    model = _residual_mlp()
    prop, _ = _hard_box(model)
    # The first graph verification imports the graph front end (about 1 s, once per process): not
    # bound work, so done before the clock matters.
    verify_property(model, prop, (6,), methods=("ibp",), timeout=60.0)
    _slow_rows(monkeypatch, db, "_rows_pass")
    for method in ("crown", "alpha-crown"):
        t0 = time.monotonic()
        res = verify_property(model, prop, (6,), methods=(method,), timeout=1.0)
        assert res.status == "timeout", method
        assert time.monotonic() - t0 < 2.0, method
        assert res.stages[-1]["note"] == "stopped at the deadline"


def test_graph_alpha_crown_stops_at_its_deadline_with_the_best_bound_so_far():
    from robustcli.certify import dag_bounds as db

    model = _residual_mlp(2)
    dag = db.Dag.of(model, (6,))
    x = torch.full((1, 6), 0.5, dtype=torch.float64)
    lo, hi = x - 0.3, x + 0.3
    C = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    crown, inter = db.crown_spec(dag, lo, hi, C)
    with pytest.raises(DeadlineReached):  # no iteration can finish: no bound
        db.alpha_crown_spec(dag, lo, hi, C, None, inter, deadline=time.monotonic() - 1)
    t0 = time.monotonic()
    low = db.alpha_crown_spec(dag, lo, hi, C, None, inter, iterations=10**6, deadline=t0 + 0.5,
                              stop_when_positive=False)
    assert time.monotonic() - t0 < 1.5 and bool((low >= crown - 1e-9).all())


def test_graph_alpha_crown_without_intermediate_slopes_is_sound_and_no_looser_than_crown(monkeypatch):
    from robustcli.certify import dag_bounds as db

    model = _residual_mlp(1).double()
    dag = db.Dag.of(model, (6,))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 6, generator=g, dtype=torch.float64)
    lo, hi = (x - 0.25).clamp(0, 1), (x + 0.25).clamp(0, 1)
    C = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
    crown, inter = db.crown_spec(dag, lo, hi, C)
    full = db.alpha_crown_spec(dag, lo, hi, C, None, inter, iterations=10, stop_when_positive=False)
    monkeypatch.setattr(cb, "ALPHA_ELEMENTS", 0)  # as if the layers were too wide
    tight: dict = {}
    spec_only = db.alpha_crown_spec(dag, lo, hi, C, None, inter, iterations=10, stop_when_positive=False,
                                    tightened_out=tight)
    for q, (l, u) in inter.items():  # the intermediate bounds stayed CROWN's
        torch.testing.assert_close(tight[q][0], l, atol=0, rtol=0)
        torch.testing.assert_close(tight[q][1], u, atol=0, rtol=0)
    assert bool((spec_only >= crown - 1e-9).all())
    assert bool((spec_only > crown + 1e-6).any())  # the specification's slopes were optimised
    assert bool((full >= crown - 1e-9).all())
    pts = lo[:, None] + (hi - lo)[:, None] * torch.rand(4, 2000, 6, generator=g, dtype=torch.float64)
    pts[:, :500] = torch.where(torch.rand(4, 500, 6, generator=g, dtype=torch.float64) < 0.5, lo[:, None], hi[:, None])
    with torch.no_grad():
        vals = torch.einsum("kc,bnc->bnk", C, model(pts.reshape(-1, 6)).reshape(4, 2000, 3))
    assert bool((spec_only[:, None] <= vals + 1e-9).all())
