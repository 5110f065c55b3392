"""Native CROWN through max pooling (certify/dag_bounds.py, DeepPoly's max pooling lines): the
windows equal torch's, every line holds on every point of its box, and the CROWN family's bounds on
max-pooling CNNs are never above a point found by sampling, corners or PGD."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from certify_nets import empirical_min, grid_points, predicted_margins, sound_ball_lows, sound_box_lows
from onnx_helpers import vnnlib_box
from robustcli.certify import dag_bounds as db
from robustcli.certify.bounders import CrownBounder, InputSet, build_bounder
from robustcli.certify.lirpa import lirpa_available
from robustcli.core.nn import Residual

LIRPA = pytest.mark.skipif(not lirpa_available(), reason="auto_LiRPA not installed")


def _k2s2() -> nn.Module:
    torch.manual_seed(11)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(96, 10)).eval()


def _k3s2p1() -> nn.Module:
    torch.manual_seed(12)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Conv2d(4, 6, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(96, 10)).eval()


def _k3s1() -> nn.Module:
    torch.manual_seed(13)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 1), nn.Conv2d(4, 6, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(216, 10)).eval()


def _residual_ceil() -> nn.Module:
    """A max pooling right after a residual add, with ceil_mode (a last window past the edge), then a
    ReLU: the pooling's output itself feeds a ReLU."""
    torch.manual_seed(14)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1))),
                         nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(), nn.Flatten(), nn.Linear(64, 10)).eval()  # fmt: skip


def _adaptive() -> nn.Module:
    """Adaptive max pooling 8x8 -> 3x3: overlapping windows of sizes 3 and 4."""
    torch.manual_seed(15)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(3), nn.Flatten(),
                         nn.Linear(36, 10)).eval()


NETS = {"k2s2": _k2s2, "k3s2p1": _k3s2p1, "k3s1": _k3s1, "residual-ceil": _residual_ceil, "adaptive": _adaptive}


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(3, 1), nn.MaxPool2d(3, 2, ceil_mode=True),
                                  nn.MaxPool2d(3, 2, 1, dilation=2), nn.MaxPool2d((2, 3), (1, 2), (1, 1), ceil_mode=True)])
@pytest.mark.parametrize("hw", [(7, 7), (8, 6)])
def test_windows_are_torch_max_pooling_windows(pool, hw):
    x = torch.randn(3, 2, *hw, dtype=torch.float64)
    y = pool(x)
    window = db._window_index(pool, (2, *hw), tuple(y.shape[2:]), torch.device("cpu"))
    padded = torch.cat([x.reshape(3, -1), torch.full((3, 1), float("-inf"), dtype=torch.float64)], 1)
    assert torch.equal(padded[:, window].amax(2), y.reshape(3, -1))


@pytest.mark.parametrize("size", [3, (2, 5), 4, 1])
@pytest.mark.parametrize("hw", [(7, 7), (8, 6)])
def test_adaptive_windows_are_torch_adaptive_max_pooling_windows(size, hw):
    pool = nn.AdaptiveMaxPool2d(size)
    x = torch.randn(3, 2, *hw, dtype=torch.float64)
    y = pool(x)
    window = db._adaptive_window_index(pool, (2, *hw), tuple(y.shape[2:]), torch.device("cpu"))
    padded = torch.cat([x.reshape(3, -1), torch.full((3, 1), float("-inf"), dtype=torch.float64)], 1)
    assert torch.equal(padded[:, window].amax(2), y.reshape(3, -1))


def test_maxpool_lines_hold_on_every_point_of_the_box():
    """lower line x_jstar <= max_j x_j <= upper line (x_jstar where exact, else max_j u_j), at corners
    and inside; boxes drawn so that some windows are decided (one input dominating)."""
    g = torch.Generator().manual_seed(0)
    pool = nn.MaxPool2d(3, 2, 1)
    shape = (3, 7, 7)
    window = db._window_index(pool, shape, (4, 4), torch.device("cpu"))
    l = torch.randn(20, 147, generator=g, dtype=torch.float64)
    u = l + torch.rand(20, 147, generator=g, dtype=torch.float64) * torch.where(torch.rand(20, 147, generator=g) < 0.5, 0.05, 2.0)
    l[:10] += 3.0 * (torch.rand(10, 147, generator=g) < 0.1)  # dominating inputs: decided windows
    u[:10] = torch.maximum(u[:10], l[:10])
    jstar, exact, upper = db._maxpool_lines(window, l, u)
    assert bool(exact.any()) and bool((~exact).any())
    pts = l + (u - l) * torch.rand(400, 20, 147, generator=g, dtype=torch.float64)
    pts[:200] = torch.where(torch.rand(200, 20, 147, generator=g) < 0.5, l, u)
    y = pool(pts.reshape(-1, *shape)).reshape(400, 20, -1)
    x_star = pts.gather(2, jstar.expand(400, -1, -1))
    assert bool((x_star <= y + 1e-12).all())
    assert bool((y <= torch.where(exact, x_star, upper) + 1e-12).all())
    torch.testing.assert_close(y[:, exact], x_star[:, exact], atol=0, rtol=0)


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.4)])
def test_maxpool_bounds_are_sound_on_balls_and_no_looser_than_ibp(name, norm, eps):
    model = NETS[name]()
    x = grid_points(4)
    lows = sound_ball_lows(model, x, predicted_margins(model, x), eps, norm, ("ibp", "crown-ibp", "crown", "alpha-crown"))
    assert isinstance(build_bounder("crown", model, x[:2]), CrownBounder)
    assert bool((lows["alpha-crown"] >= lows["crown"] - 1e-9).all())
    assert bool((lows["crown"] >= lows["ibp"] - 1e-6).all())
    assert float((lows["crown"] - lows["ibp"]).max()) > 1e-3  # CROWN gains somewhere


@pytest.mark.parametrize("name", list(NETS))
def test_maxpool_bounds_are_sound_on_boxes(name):
    """A per-element box with an offset d (what VNNLIB gives)."""
    model = NETS[name]()
    lows = sound_box_lows(model, grid_points(5), 0.08, ("ibp", "crown-ibp", "crown", "alpha-crown"))
    assert bool((lows["alpha-crown"] >= lows["crown"] - 1e-9).all())
    assert bool((lows["crown"] >= lows["ibp"] - 1e-6).all())


@LIRPA
def test_native_crown_against_auto_lirpa_on_kernel_equal_stride():
    """auto_LiRPA 0.3 bounds max pooling with kernel = stride and no padding. Its relaxation differs
    (no equality asked); both are sound, and native CROWN is never looser than IBP."""
    model = _k2s2()
    x = grid_points(7)
    spec = predicted_margins(model, x)
    s = InputSet.ball(x, 0.02, "linf")
    native = build_bounder("crown", model, x[:2]).lower(s, spec)
    lirpa = build_bounder("lirpa-crown", model, x[:2]).lower(s, spec)
    ibp = build_bounder("ibp", model, x[:2]).lower(s, spec)
    empirical = empirical_min(model, x, spec, 0.02, "linf")
    assert bool((native <= empirical + 1e-5).all()) and bool((lirpa <= empirical + 1e-4).all())
    assert bool((native >= ibp - 1e-6).all())
    diff = native - lirpa.to(native.dtype)
    print(f"native minus auto_LiRPA CROWN: min {float(diff.min()):.3g} max {float(diff.max()):.3g} "
          f"mean {float(diff.mean()):.3g}")


def test_cli_certifies_a_max_pooling_model_file_with_crown(tmp_path, run_cli):
    model = _k3s2p1()
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(model, (grid_points(0, 2),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    out = tmp_path / "r.json"
    r = run_cli("certify", "--model", tmp_path / "m.pt2", "--data", "digits", "--n", "8", "--eps", "0.01", "--method", "ibp", "crown",
                "--pgd-steps", "2", "--json", out)
    assert r.exit_code == 0, r.output
    rows = {row["method"]: row for row in json.loads(out.read_text())["results"]}
    assert set(rows) == {"ibp", "crown"}


def test_onnx_max_pooling_cnn_spec_gets_native_crown(tmp_path, run_cli):
    """`robust certify --spec` on an ONNX CNN with MaxPool: the CROWN stage is native on the graph;
    a 'holds' is never contradicted by sampled points of the box."""
    pytest.importorskip("onnx")
    model = _k3s2p1()
    x = grid_points(9, 1)
    torch.onnx.export(model, (x,), str(tmp_path / "m.onnx"), dynamo=False, input_names=["x"], output_names=["y"])
    label = int(model(x).argmax(1))
    lo, hi = (x - 0.002).clamp(0, 1).flatten(), (x + 0.002).clamp(0, 1).flatten()
    (tmp_path / "p.vnnlib").write_text(vnnlib_box(lo.tolist(), hi.tolist(), label, 10))
    out = tmp_path / "r.json"
    r = run_cli("certify", "--model", tmp_path / "m.onnx", "--spec", tmp_path / "p.vnnlib", "--method", "crown",
                "--json", out)
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    notes = [s.get("note", "") for s in report["stages"]]
    assert "native CROWN (graph model)" in notes, report
    if report["status"] == "holds":
        pts = lo + (hi - lo) * torch.rand(2000, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert bool((model(pts.view(-1, 1, 8, 8)).argmax(1) == label).all())


def test_optimised_max_pooling_lines_hold_on_every_point_of_the_box():
    """alpha-CROWN's max pooling lower line, a convex combination of the window's inputs with any
    weights in [0, 1] (padding slots ignored, all-zero weights falling back to x_jstar), is never
    above the pooled outputs of points in the box."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.MaxPool2d(3, 2, 1), nn.Flatten(), nn.Linear(4 * 16, 5)).double().eval()
    dag = db.Dag.of(model, (4, 7, 7))
    pool = next(i for i, n in enumerate(dag.nodes) if n.kind == "maxpool")
    g = torch.Generator().manual_seed(3)
    lo = torch.rand(2, 4, 7, 7, generator=g, dtype=torch.float64) - 0.5
    hi = lo + torch.rand(2, 4, 7, 7, generator=g, dtype=torch.float64)
    bounds = {dag.nodes[pool].parents[0]: (lo, hi)}
    A = torch.randn(2, 5, 5, generator=g, dtype=torch.float64)
    k = dag.nodes[pool].window.shape[1]
    for weights in (torch.rand(2, 5, 16 * 4, k, generator=g, dtype=torch.float64),
                    torch.zeros(2, 5, 16 * 4, k, dtype=torch.float64)):
        low = db.backward_lower(dag, dag.output, A, lo, hi, bounds, alphas={pool: weights})
        pts = lo + (hi - lo) * torch.rand(3000, *lo.shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            vals = torch.einsum("brk,nbk->nbr", A, model(pts.reshape(-1, 4, 7, 7)).reshape(3000, 2, 5))
        assert bool((low <= vals.min(0).values + 1e-9).all())


def test_alpha_crown_optimises_the_max_pooling_lines(monkeypatch):
    """alpha-CROWN gains more over CROWN when it also optimises the max pooling lower lines than with
    them fixed at x_jstar (as auto_LiRPA 0.3 optimises them), and stays sound."""
    model = NETS["residual-ceil"]()
    x = grid_points(4)
    spec = predicted_margins(model, x)
    s = InputSet.ball(x, 0.06, "linf")

    def deeppoly_only(method: str, **kw):  # DeepPoly's lines alone (no ReLU form): what this measures
        bounder = build_bounder(method, model, x[:2], **kw)
        bounder.forms = None
        return bounder

    crown = deeppoly_only("crown").lower(s, spec)
    optimised = deeppoly_only("alpha-crown", alpha_iterations=20).lower(s, spec)
    back = db._maxpool_back
    monkeypatch.setattr(db, "_maxpool_back", lambda *args, **kw: back(*args[:5]))  # the weights ignored
    fixed = deeppoly_only("alpha-crown", alpha_iterations=20).lower(s, spec)
    assert float((optimised - crown).max()) > float((fixed - crown).max())
    empirical = empirical_min(model, x, spec, 0.06, "linf")
    assert bool((optimised <= empirical + 1e-5 + 1e-5 * empirical.abs()).all())
