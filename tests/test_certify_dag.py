"""Native CROWN / alpha-CROWN through residual adds and concatenations (certify/dag_bounds.py):
equal to auto_LiRPA 0.3's CROWN on residual and concat models, equal to the chain engine on chains,
never above a sampled or attacked point of the box / Linf ball / L2 ball, alpha-CROWN never looser
than CROWN, no auto_LiRPA needed, and `robust certify --method crown` on a residual model file."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from certify_nets import (empirical_min, grid_points, predicted_margins, random_cnn, random_mlp, resnet_digits_cnn,
                          sound_ball_lows, sound_box_lows)
from robustcli.certify import chain_bounds as cb
from robustcli.certify import dag_bounds as db
from robustcli.certify.bounders import CrownBounder, InputSet, build_bounder
from robustcli.certify.lirpa import lirpa_available
from robustcli.core.nn import Concat, Normalized, Residual

LIRPA = pytest.mark.skipif(not lirpa_available(), reason="auto_LiRPA not installed")


def _concat_net(head: bool = True) -> nn.Module:
    """Concatenations along channels (an Inception block next to the input itself) and (`head`) along
    flat features, BatchNorm in a branch, a residual add inside a concat branch, normalisation in front."""
    torch.manual_seed(3)
    stem = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())
    inception = Concat([nn.Sequential(nn.Conv2d(4, 2, 1), nn.ReLU()),
                        nn.Sequential(nn.Conv2d(4, 3, 3, padding=1), nn.ReLU()),
                        nn.AvgPool2d(3, 1, 1)])
    join = Concat([nn.Identity(), nn.Sequential(nn.Linear(12, 4), nn.ReLU()),
                   Residual(nn.Sequential(nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 12)))])
    tail = [join, nn.ReLU(), nn.Linear(28, 10)] if head else [nn.Linear(12, 10)]
    model = Normalized(nn.Sequential(
        Concat([nn.Identity(), stem]), inception, nn.AvgPool2d(2), nn.Flatten(), nn.Linear(9 * 16, 12), nn.ReLU(), *tail,
    ), [0.45], [0.25])  # fmt: skip
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.3)
    return model.eval()


def _residual_cnn() -> nn.Module:
    return random_cnn(2, True, 5, residual=True)


def _pool_trunk_cnn() -> nn.Module:
    """Average pooling inside the convolutional trunk (strided, and 3x3 stride 1 right after a
    convolution in a residual body and in a concat branch): patch rows pass through it."""
    torch.manual_seed(7)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.AvgPool2d(3, 1, 1))), nn.ReLU(),
        Concat([nn.Conv2d(4, 2, 1), nn.AvgPool2d(3, 1, 1)]), nn.ReLU(), nn.Flatten(), nn.Linear(96, 10),
    ).eval()  # fmt: skip


NETS = {"resnet": resnet_digits_cnn, "residual-cnn": _residual_cnn, "concat": _concat_net, "pool-trunk": _pool_trunk_cnn}


def _concat_input_cnn() -> nn.Module:
    """The input itself concatenated with a computed branch (DenseNet reuse), then a 3x3 conv."""
    torch.manual_seed(4)
    return nn.Sequential(Concat([nn.Identity(), nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU())]),
                         nn.Conv2d(4, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(192, 10)).eval()


def _concat_pool_cnn() -> nn.Module:
    """An Inception-like join of a 1x1 conv branch and an average pooling branch after a stem."""
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(),
                         Concat([nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU()), nn.AvgPool2d(3, 1, 1)]),
                         nn.Flatten(), nn.Linear(320, 12), nn.ReLU(), nn.Linear(12, 10)).eval()


def _concat_flat_mlp() -> nn.Module:
    torch.manual_seed(6)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU(), Concat([nn.Linear(10, 6), nn.Linear(10, 5)]),
                         nn.ReLU(), nn.Linear(11, 10)).eval()


# Compared with auto_LiRPA 0.3 on graphs it bounds with CROWN's intermediate bounds alone. Left out,
# measured: a residual add of flat (Linear) tensors (its CROWN fails: IndexError); a ReLU reading a
# concatenation that holds another ReLU's output, and _concat_net's 1x1 conv over a concatenation
# of the input and a ReLU output (its intermediate bounds there are not CROWN's alone: up to 1e-3
# apart at eps 0.04, in both directions).
LIRPA_NETS = {"resnet-conv": lambda: resnet_digits_cnn(fc_residual=False), "residual-cnn": _residual_cnn,
              "concat-input": _concat_input_cnn, "concat-pool": _concat_pool_cnn, "concat-flat": _concat_flat_mlp}


@pytest.mark.parametrize("name", list(NETS))
def test_graph_models_are_bounded_natively(name):
    model = NETS[name]()
    bounder = build_bounder("crown", model, grid_points(0)[:2])
    assert isinstance(bounder, CrownBounder) and bounder.dag is not None
    kinds = {n.kind for n in bounder.dag.nodes}
    assert ("add" in kinds) or ("concat" in kinds)


def test_chains_keep_the_chain_engine():
    bounder = build_bounder("crown", random_cnn(3, True, 4), grid_points(0)[:2])
    assert bounder.dag is None and isinstance(bounder.chain, cb.Chain)


@LIRPA
@pytest.mark.parametrize("name", list(LIRPA_NETS))
@pytest.mark.parametrize("eps", [0.01, pytest.param(0.04, marks=pytest.mark.slow)])
def test_crown_equals_auto_lirpa_crown_on_graphs(name, eps):
    """The same relaxation (adaptive lower slope) through the same graph, with CROWN's intermediate
    bounds alone (as auto_LiRPA computes them): equal to 1e-5 (auto_LiRPA computes in float32). The
    default also intersects them with IBP's, which moves the adaptive slopes: close, both ways."""
    from robustcli.certify.lirpa import LirpaBounder

    model = LIRPA_NETS[name]()
    x = grid_points(1, 4)
    spec = predicted_margins(model, x)
    lirpa, _ = LirpaBounder(model, x[:2], "crown").bounds(x, eps, "linf", spec, bound_upper=False)
    s = InputSet.ball(x.double(), eps, "linf")
    dag = db.Dag.of(model, tuple(x.shape[1:]))
    inter = db.crown_intermediate(dag, s.lower, s.upper, intersect_ibp=False)
    native, _ = db.crown_spec(dag, s.lower, s.upper, spec.double(), bounds=inter)
    scale = 1 + float(lirpa.abs().max())
    assert float((native - lirpa.double()).abs().max()) < 1e-5 * scale
    default = build_bounder("crown", model, x[:2]).lower(InputSet.ball(x, eps, "linf"), spec)
    assert float((default - lirpa).abs().max()) < 1e-2 * scale


CHAINS = {"mlp": lambda: random_mlp(4, True, 2), "cnn": lambda: random_cnn(3, True, 4), "cnn-nobn": lambda: random_cnn(3, False, 7)}


@pytest.mark.parametrize("name", list(CHAINS))
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
def test_dag_engine_equals_chain_engine_on_chains(name, norm, eps):
    model = CHAINS[name]()
    x = grid_points(2) if name != "mlp" else torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    spec = predicted_margins(model, x).double()
    s = InputSet.ball(x.double(), eps, norm)
    ball = s.l2_ball
    chain, dag = cb.Chain.of(model, tuple(x.shape[1:])), db.Dag.of(model, tuple(x.shape[1:]))
    assert [n.kind for n in dag.nodes].count("relu") == len(chain.blocks) - 1
    inter_c = cb.crown_intermediate(chain, s.lower, s.upper, ball=ball)
    A = spec.reshape(spec.shape[0], spec.shape[1], *chain.out_shapes[-1])
    want = cb.backward_lower(chain, len(chain.blocks) - 1, A, s.lower, s.upper, inter_c, ball=ball)
    got, inter_d = db.crown_spec(dag, s.lower, s.upper, spec, ball=ball)
    torch.testing.assert_close(got, want, atol=1e-8, rtol=0)
    for (lc, uc), q in zip(inter_c, dag.pre):
        torch.testing.assert_close(inter_d[q][0].reshape(lc.shape), lc, atol=1e-8, rtol=0)
        torch.testing.assert_close(inter_d[q][1].reshape(uc.shape), uc, atol=1e-8, rtol=0)
    want_ibp = cb.backward_lower(chain, len(chain.blocks) - 1, A, s.lower, s.upper, cb.ibp_intermediate(chain, s.lower, s.upper))
    got_ibp, _ = db.crown_spec(dag, s.lower, s.upper, spec, bounds=db.crown_intermediate(dag, s.lower, s.upper, crown=False))
    torch.testing.assert_close(got_ibp, want_ibp, atol=1e-8, rtol=0)


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.4)])
def test_graph_bounds_are_sound_on_balls(name, norm, eps):
    model = NETS[name]()
    x = grid_points(4)
    lows = sound_ball_lows(model, x, predicted_margins(model, x), eps, norm, ("crown-ibp", "crown", "alpha-crown"))
    assert bool((lows["alpha-crown"] >= lows["crown"] - 1e-9).all())
    assert bool((lows["crown"] >= lows["crown-ibp"] - 1e-9).all())


@pytest.mark.parametrize("name", list(NETS))
def test_graph_bounds_are_sound_on_boxes(name):
    """A per-element box with an offset d (what VNNLIB gives): auto_LiRPA is not asked."""
    model = NETS[name]()
    lows = sound_box_lows(model, grid_points(5), 0.06, ("crown", "alpha-crown"))
    assert bool((lows["alpha-crown"] >= lows["crown"] - 1e-9).all())


def test_alpha_crown_tightens_a_residual_model():
    """At a radius where CROWN leaves many neurons unstable, optimised slopes gain somewhere."""
    model = resnet_digits_cnn()
    x = grid_points(7, 2)
    spec = predicted_margins(model, x)
    s = InputSet.ball(x, 0.05, "linf")
    crown = build_bounder("crown", model, x).lower(s, spec)
    alpha = build_bounder("alpha-crown", model, x, alpha_iterations=15).lower(s, spec)
    assert bool((alpha >= crown - 1e-9).all()) and float((alpha - crown).max()) > 1e-4
    assert bool((alpha <= empirical_min(model, x, spec, 0.05, "linf") + 1e-5).all())


def test_graph_crown_needs_no_auto_lirpa(monkeypatch):
    import robustcli.certify.lirpa

    def missing():
        raise ImportError("No module named 'auto_LiRPA'")

    monkeypatch.setattr(robustcli.certify.lirpa, "import_auto_lirpa", missing)
    model = resnet_digits_cnn()
    x = grid_points(8)
    low = build_bounder("crown", model, x[:2]).lower(InputSet.ball(x, 0.01, "linf"), predicted_margins(model, x))
    assert bool(torch.isfinite(low).all())


def test_maxpool_in_a_residual_model_is_bounded_natively():
    """Max pooling is a node of the graph engine (certify/dag_bounds.py); tests/test_certify_maxpool.py
    checks its soundness."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1))),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10)).eval()
    bounder = build_bounder("crown", model, grid_points(0)[:2])
    assert isinstance(bounder, CrownBounder) and "maxpool" in {n.kind for n in bounder.dag.nodes}


@pytest.mark.parametrize("fmt", [pytest.param("state", marks=pytest.mark.slow), "pt2"])
def test_cli_certifies_a_residual_model_file_with_crown(tmp_path, run_cli, fmt):
    from certify_nets import model_files

    model = resnet_digits_cnn()
    files = model_files(tmp_path, model, grid_points(0, 2), "certify_nets:resnet_digits_cnn")
    out = tmp_path / "r.json"
    r = run_cli("certify", *files[fmt], "--data", "digits", "--n", "8", "--eps", "0.01", "--method", "ibp", "crown",
                "alpha-crown", "--pgd-steps", "2", "--json", out)
    assert r.exit_code == 0, r.output
    rows = {row["method"]: row for row in json.loads(out.read_text())["results"]}
    assert set(rows) == {"ibp", "crown", "alpha-crown"}
    for row in rows.values():
        assert 0.0 <= row["verified_accuracy"] <= row["pgd_accuracy"] <= row["clean_accuracy"]
    assert rows["crown"]["mean_margin_lower_bound"] >= rows["ibp"]["mean_margin_lower_bound"] - 1e-6
    assert rows["alpha-crown"]["mean_margin_lower_bound"] >= rows["crown"]["mean_margin_lower_bound"] - 1e-6


@pytest.mark.parametrize("name", ["resnet", "concat", "concat-input", "pool-trunk"])
@pytest.mark.parametrize("norm,eps", [("linf", 0.04), ("l2", 0.4)])
def test_patch_rows_equal_dense_rows(name, norm, eps):
    """Rows kept as patches through convolutions, adds and channel concatenations give the dense
    rows' bounds (the same arithmetic where the rows are not zero)."""
    model = {**NETS, **LIRPA_NETS}[name]()
    x = grid_points(9).double()
    s = InputSet.ball(x, eps, norm)
    spec = predicted_margins(model, x.float()).double()
    patched, dense = db.Dag.of(model, tuple(x.shape[1:])), db.Dag.of(model, tuple(x.shape[1:]))
    dense._patchable = {q: False for q in range(len(dense.nodes))}
    a, inter_a = db.crown_spec(patched, s.lower, s.upper, spec, ball=s.l2_ball)
    b, inter_b = db.crown_spec(dense, s.lower, s.upper, spec, ball=s.l2_ball)
    assert any(patched._patchable.values())  # some rows went as patches
    torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    for q in inter_a:
        torch.testing.assert_close(inter_a[q][0], inter_b[q][0], atol=1e-10, rtol=0)
        torch.testing.assert_close(inter_a[q][1], inter_b[q][1], atol=1e-10, rtol=0)


def vnnlib_box(lower, upper, label: int, n_out: int, extra_outputs: str | None = None) -> str:
    """A VNN-COMP style robustness property on a box: violated iff some other output >= the label's."""
    lines = [f"(declare-const X_{i} Real)" for i in range(len(lower))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, (lo, hi) in enumerate(zip(lower, upper)):
        lines += [f"(assert (<= X_{i} {float(hi)!r}))", f"(assert (>= X_{i} {float(lo)!r}))"]
    ors = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(n_out) if j != label)
    lines.append(extra_outputs or f"(assert (or {ors}))")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("stages", [("crown",), ("alpha-crown",)])
def test_spec_verification_bounds_a_residual_cnn_natively(stages):
    """A VNNLIB robustness box on the residual CNN: the CROWN stage proves it natively (no auto_LiRPA)
    where the proof is right (the margin's CROWN bound over the box is positive), and the stage's note
    says so; a property with the label's margin shifted past the sampled minimum is never proved."""
    from robustcli.certify.spec_verify import verify_property
    from robustcli.certify.vnnlib import parse_vnnlib

    model = resnet_digits_cnn()
    x = grid_points(10, 1)
    label = int(model(x).argmax(1))
    lo, hi = (x - 0.004).clamp(0, 1).flatten(), (x + 0.004).clamp(0, 1).flatten()
    prop = parse_vnnlib(vnnlib_box(lo.tolist(), hi.tolist(), label, 10))
    res = verify_property(model, prop, (1, 8, 8), methods=stages)
    assert res.status == "holds" and res.method == stages[0]
    assert res.stages[0]["note"] == "native CROWN (graph model)"
    with torch.no_grad():
        pts = lo + (hi - lo) * torch.rand(2000, lo.numel(), generator=torch.Generator().manual_seed(0))
        y = model(pts.reshape(-1, 1, 8, 8))
        margin = (y[:, label:label + 1] - y).topk(2, dim=1, largest=False).values[:, 1]  # smallest over j != label
    shift = float(margin.min()) + 0.01  # Y_label - Y_j >= shift is false at some sampled point
    others = " ".join(f"(and (<= Y_{label} (+ Y_{j} {shift!r})))" for j in range(10) if j != label)
    false = parse_vnnlib(vnnlib_box(lo.tolist(), hi.tolist(), label, 10, extra_outputs=f"(assert (or {others}))"))
    assert verify_property(model, false, (1, 8, 8), methods=stages).status != "holds"


@pytest.mark.parametrize("name", ["resnet", "concat", "pool-trunk"])
def test_alpha_crown_with_patch_slopes_equals_dense_slopes(name):
    """Slopes kept per row and window position are the dense slopes restricted to where the row is
    not zero: the same parametrisation, so the same Adam iterates and bounds."""
    model = NETS[name]()
    x = grid_points(11).double()
    s = InputSet.ball(x, 0.05, "linf")
    spec = torch.randn(len(x), 4, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)  # rows not yet proven
    lows = []
    for patches in (True, False):
        dag = db.Dag.of(model, tuple(x.shape[1:]))
        if not patches:
            dag._patchable = {q: False for q in range(len(dag.nodes))}
        with torch.no_grad():
            inter = db.crown_intermediate(dag, s.lower, s.upper)
        lows.append(db.alpha_crown_spec(dag, s.lower, s.upper, spec, None, inter, iterations=4, stop_when_positive=False))
    crown, _ = db.crown_spec(dag, s.lower, s.upper, spec, bounds=inter)
    assert float((lows[0] - crown).max()) > 1e-4  # the slopes moved
    torch.testing.assert_close(lows[0], lows[1], atol=1e-10, rtol=0)


def test_spec_verification_bounds_smooth_activation_graphs_natively():
    """A graph with a tanh before a max pooling gets its CROWN stage from the native graph engine
    (the tanh's lines: certify/activation_lines.py)."""
    from robustcli.certify.spec_verify import verify_property
    from robustcli.certify.vnnlib import parse_vnnlib

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10)).eval()
    x = grid_points(12, 1)
    label = int(model(x).argmax(1))
    lo, hi = (x - 0.002).clamp(0, 1).flatten(), (x + 0.002).clamp(0, 1).flatten()
    res = verify_property(model, parse_vnnlib(vnnlib_box(lo.tolist(), hi.tolist(), label, 10)), (1, 8, 8),
                          methods=("crown",))
    assert res.stages[0]["note"] == "native CROWN (graph model)"
    assert res.status in ("holds", "unknown")
