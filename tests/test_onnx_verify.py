"""Spec verification: sound bounds, confirmed counterexamples, the verify-spec and vnncomp commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from onnx_helpers import mlp_onnx, vnnlib_box

ort = pytest.importorskip("onnxruntime")

from robustcli.certify import chain_bounds as cb  # noqa: E402
from robustcli.certify.onnx_import import onnx_to_torch  # noqa: E402
from robustcli.certify.spec_verify import verify_property  # noqa: E402
from robustcli.certify.vnncomp import read_counterexample  # noqa: E402
from robustcli.certify.vnnlib import parse_vnnlib, read_vnnlib  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _chains():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    bn = nn.BatchNorm2d(3)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2)
    cnn = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), bn, nn.ReLU(), nn.Conv2d(3, 2, 3, stride=2), nn.ReLU(),
                        nn.Flatten(), nn.Linear(2 * 2 * 2, 4))
    return [(mlp.eval(), (1, 6)), (cnn.eval(), (1, 6, 6))]


@pytest.mark.parametrize("which", [0, 1])
def test_bounds_are_sound_on_samples(which):
    model, shape = _chains()[which]
    g = torch.Generator().manual_seed(1)
    centre = torch.rand(1, *shape, generator=g, dtype=torch.float64)
    lo, hi = centre - 0.15, centre + 0.15
    C = torch.randn(5, 4, generator=g, dtype=torch.float64)
    d = torch.randn(5, generator=g, dtype=torch.float64)
    chain = cb.Chain.of(model, shape)
    ibp = cb.ibp_spec(chain, lo, hi, C, d)
    crown, inter = cb.crown_spec(chain, lo, hi, C, d)
    alpha = cb.alpha_crown_spec(chain, lo, hi, C, d, inter, iterations=8, stop_when_positive=False)
    x = lo + (hi - lo) * torch.rand(4000, *shape, generator=g, dtype=torch.float64)
    x[:64] = torch.where(torch.rand(64, *shape, generator=g) < 0.5, lo, hi)  # corners
    with torch.no_grad():
        m = model.double()(x) @ C.T + d
    true_min = m.min(0).values
    for name, bound in (("ibp", ibp), ("crown", crown), ("alpha", alpha)):
        assert bool((bound[0] <= true_min + 1e-9).all()), name
    assert bool((alpha[0] >= crown[0] - 1e-9).all())  # alpha-CROWN starts from CROWN's slopes
    assert bool((crown[0] > ibp[0]).any())  # and CROWN is tighter than IBP somewhere on this net


def _net_and_points(tmp_path):
    net = mlp_onnx(tmp_path / "net.onnx", sizes=(2, 16, 3), seed=5)
    conv = onnx_to_torch(net)
    grid = torch.stack(torch.meshgrid(torch.linspace(-2, 2, 41), torch.linspace(-2, 2, 41), indexing="ij"), -1)
    with torch.no_grad():
        y = conv.module(grid.reshape(-1, 2, 1))
    return net, conv, grid.reshape(-1, 2), y


def _violated_spec(tmp_path, grid, y) -> tuple[Path, int]:
    """A box around a point whose winning class is not the label."""
    label = int(y[0].argmax())
    k = int((y.argmax(1) != label).nonzero()[0])
    x = grid[k]
    spec = tmp_path / "violated.vnnlib"
    spec.write_text(vnnlib_box((x - 0.05).tolist(), (x + 0.05).tolist(), label, 3))
    return spec, label


def _holds_spec(tmp_path, grid, y) -> Path:
    """A tiny box around the point of largest margin."""
    top2 = y.topk(2, 1).values
    k = int((top2[:, 0] - top2[:, 1]).argmax())
    x = grid[k]
    spec = tmp_path / "holds.vnnlib"
    spec.write_text(vnnlib_box((x - 1e-3).tolist(), (x + 1e-3).tolist(), int(y[k].argmax()), 3))
    return spec


def _confirm_with_onnxruntime(net: Path, spec: Path, ce: Path) -> None:
    x, y_file = read_counterexample(ce)
    prop = read_vnnlib(spec)
    case = prop.cases[0]
    assert bool(((x >= case.lower) & (x <= case.upper)).all())
    session = ort.InferenceSession(str(net), providers=["CPUExecutionProvider"])
    y = session.run(None, {session.get_inputs()[0].name: x.numpy().astype(np.float32).reshape(1, 2, 1)})[0]
    y = torch.from_numpy(y.astype(np.float64))
    assert bool(case.violated_by(y)[0])
    torch.testing.assert_close(y[0], y_file)


def test_certify_spec_violated_writes_a_confirmed_counterexample(tmp_path, run_cli):
    net, _, grid, y = _net_and_points(tmp_path)
    spec, _ = _violated_spec(tmp_path, grid, y)
    ce, out = tmp_path / "ce.txt", tmp_path / "r.json"
    r = run_cli("certify", "--model", net, "--spec", spec, "--counterexample", ce, "--json", out)
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["status"] == "violated" and report["confirmed_by"] == "onnxruntime"
    assert "result: violated" in r.stdout
    _confirm_with_onnxruntime(net, spec, ce)
    r = run_cli("certify", "--model", net, "--spec", spec, "--data", "digits")
    assert r.exit_code == 2 and "--spec replaces" in r.stderr
    r = run_cli("certify", "--model", net, "--spec", spec, "--method", "crown-ibp")
    assert r.exit_code == 2 and "not available with --spec" in r.stderr
    r = run_cli("certify", "--model", net, "--data", "digits", "--method", "bab")
    assert r.exit_code == 2 and "go with --spec" in r.stderr


def test_certify_spec_holds(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default counterexample file goes to the working folder
    net, _, grid, y = _net_and_points(tmp_path)
    spec = _holds_spec(tmp_path, grid, y)
    out = tmp_path / "r.json"
    r = run_cli("certify", "--model", net, "--spec", spec, "--method", "ibp", "crown", "--json", out)
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["status"] == "holds" and report["method"] in ("ibp", "crown")
    assert not list(tmp_path.glob("*.counterexample"))
    # The same glob finds the default file when a property is violated, so the check above can fail.
    violated, _ = _violated_spec(tmp_path, grid, y)
    r = run_cli("certify", "--model", net, "--spec", violated)
    assert r.exit_code == 0 and "result: violated" in r.stdout, r.output
    assert [p.name for p in tmp_path.glob("*.counterexample")] == [f"{Path(net).stem}__{Path(violated).stem}.counterexample"]


def test_unconfirmed_candidate_is_not_called_violated(tmp_path):
    net, conv, grid, y = _net_and_points(tmp_path)
    spec, label = _violated_spec(tmp_path, grid, y)
    prop = read_vnnlib(spec)

    def reference_says_safe(x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(x), 3, dtype=torch.float64)
        out[:, label] = 100.0
        return out

    res = verify_property(conv.module, prop, conv.input_shape, reference=reference_says_safe, timeout=20)
    assert res.status in ("unknown", "timeout") and res.counterexample is None
    assert "not confirmed" in res.stages[0]["note"]


def test_empty_output_condition_is_violated_anywhere(tmp_path):
    net, conv, _, _ = _net_and_points(tmp_path)
    text = vnnlib_box([0.0, 0.0], [0.1, 0.1], 0, 3, extra_outputs="(assert (<= Y_0 1000))")
    res = verify_property(conv.module, parse_vnnlib(text), conv.input_shape)
    assert res.status == "violated"


def test_vnncomp_command_and_config(tmp_path, run_cli):
    net, _, grid, y = _net_and_points(tmp_path)
    violated, _ = _violated_spec(tmp_path, grid, y)
    holds = _holds_spec(tmp_path, grid, y)
    import gzip

    (tmp_path / "net.onnx.gz").write_bytes(gzip.compress(net.read_bytes()))  # VNN-COMP 2022+ ships .gz
    (tmp_path / "holds.vnnlib.gz").write_bytes(gzip.compress(holds.read_bytes()))
    (tmp_path / "instances.csv").write_text(
        f"net.onnx,{holds.name},30\nnet.onnx,{violated.name},30\nnet.onnx.gz,holds.vnnlib.gz,30\n")
    out, js = tmp_path / "results.csv", tmp_path / "r.json"
    r = run_cli("vnncomp", tmp_path / "instances.csv", "--config", CONFIGS / "vnncomp-quick.yaml",
                "--out", out, "--json", js)
    assert r.exit_code == 0, r.output
    lines = out.read_text().splitlines()
    assert [ln.split(",")[4] for ln in lines] == ["holds", "violated", "holds"]
    assert lines[0].split(",")[:3] == [tmp_path.name, "./net.onnx", "./holds.vnnlib"]
    assert all(float(ln.split(",")[5]) >= 0 for ln in lines)
    report = json.loads(js.read_text())
    assert report["counts"]["holds"] == 2 and report["counts"]["violated"] == 1
    ce = Path(report["results"][1]["counterexample"])
    _confirm_with_onnxruntime(net, violated, ce)
    # bad instances file: exit 2, no results file
    (tmp_path / "bad.csv").write_text("net.onnx,missing.vnnlib,30\n")
    r = run_cli("vnncomp", tmp_path / "bad.csv", "--out", tmp_path / "none.csv")
    assert r.exit_code == 2 and "missing.vnnlib" in r.stderr and not (tmp_path / "none.csv").exists()


def test_certify_spec_config(tmp_path, run_cli):
    net, _, grid, y = _net_and_points(tmp_path)
    spec = _holds_spec(tmp_path, grid, y)
    r = run_cli("certify", "--config", CONFIGS / "certify-spec-crown.yaml", "--model", net, "--spec", spec)
    assert r.exit_code == 0, r.output
    assert "result: holds" in r.stdout


def test_branch_and_bound_proves_what_crown_cannot_and_never_proves_a_violation():
    from robustcli.certify.bab import bab_refute

    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(2, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 2)).double().eval()
    lo, hi = torch.tensor([[-1.0, -1.0]], dtype=torch.float64), torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    C = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 401), torch.linspace(-1, 1, 401), indexing="ij"), -1)
    with torch.no_grad():
        m = (model(grid.reshape(-1, 2).double()) @ C.T).squeeze(1)
    true_min, spread = m.min().item(), (m.max() - m.min()).item()
    chain = cb.Chain.of(model, (2,))
    for offset, should_hold in ((0.03, True), (-0.03, False)):
        d = torch.tensor([-true_min + offset * spread], dtype=torch.float64)
        crown, inter = cb.crown_spec(chain, lo, hi, C, d)
        out = bab_refute(chain, lo, hi, C[None], d[None], inter, deadline=None,
                         max_domains=20_000)
        if should_hold:
            assert crown[0, 0] <= 0  # CROWN alone cannot prove it: branching is needed
            assert out.proved
        else:
            assert not out.proved  # a grid point violates: no proof may exist


def test_graph_model_is_bounded_by_native_graph_crown(tmp_path):
    """A residual ONNX graph (not a chain): its CROWN stages run natively (certify/dag_bounds.py)."""
    from onnx_helpers import helper, save, tensor

    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Gemm", ["x", "w0", "b0"], ["a"], transB=1),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Gemm", ["r", "w1", "b1"], ["c"], transB=1),
        helper.make_node("Add", ["c", "a"], ["s"]),  # residual: not a chain
        helper.make_node("Relu", ["s"], ["s2"]),
        helper.make_node("Gemm", ["s2", "w2", "b2"], ["y"], transB=1),
    ]
    inits = [tensor(f"{k}{i}", rng.standard_normal(shape).astype(np.float32))
             for i, (ws, bs) in enumerate([((6, 5), 6), ((6, 6), 6), ((3, 6), 3)])
             for k, shape in (("w", ws), ("b", (bs,)))]
    conv = onnx_to_torch(save(tmp_path / "res.onnx", nodes, inits, (1, 5), (1, 3)))
    assert not conv.chain
    x = torch.rand(20000, 5) * 0.2
    with torch.no_grad():
        m = conv.module(x) @ torch.tensor([1.0, 0.0, -1.0])
    assert float(m.min()) > 0  # Y_0 > Y_2 on the box (sampled): the property below holds
    holds = vnnlib_box([0.0] * 5, [0.2] * 5, 0, 3, extra_outputs="(assert (<= Y_0 Y_2))")
    res = verify_property(conv.module, parse_vnnlib(holds), conv.input_shape)
    assert res.status == "holds" and res.method in ("crown", "alpha-crown")
    assert any("native CROWN (graph model)" in s.get("note", "") for s in res.stages)
    shifted = vnnlib_box([0.0] * 5, [0.2] * 5, 0, 3, extra_outputs="(assert (<= Y_0 (+ Y_2 5.0)))")
    res = verify_property(conv.module, parse_vnnlib(shifted), conv.input_shape)
    assert res.status == "violated"  # Y_0 - Y_2 < 5 at some point: found and confirmed, never proved


def test_certify_spec_branch_and_bound_proves_a_residual_onnx_graph(tmp_path, run_cli):
    """`robust certify --spec` on a residual ONNX graph: with the bound stages only the property stays
    open; with `bab` (ReLU splits, on the native graph) it holds, decided by `bab`."""
    from onnx_helpers import helper, save, tensor
    from robustcli.certify import dag_bounds as db
    from robustcli.certify.spec_verify import _native_dag

    rng = np.random.default_rng(7)
    nodes = [
        helper.make_node("Gemm", ["x", "w0", "b0"], ["a"], transB=1),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Gemm", ["r", "w1", "b1"], ["c"], transB=1),
        helper.make_node("Add", ["c", "a"], ["s"]),
        helper.make_node("Relu", ["s"], ["s2"]),
        helper.make_node("Gemm", ["s2", "w2", "b2"], ["y"], transB=1),
    ]
    inits = [tensor(f"{k}{i}", rng.standard_normal(shape).astype(np.float32))
             for i, (ws, bs) in enumerate([((12, 5), 12), ((12, 12), 12), ((3, 12), 3)])
             for k, shape in (("w", ws), ("b", (bs,)))]
    path = save(tmp_path / "res.onnx", nodes, inits, (1, 5), (1, 3))
    conv = onnx_to_torch(path)
    assert not conv.chain
    lo, hi = torch.zeros(1, 5, dtype=torch.float64), torch.ones(1, 5, dtype=torch.float64)
    dag = _native_dag(conv.module, (5,), torch.device("cpu"))  # the graph the verifier bounds
    C = torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64)
    crown = float(db.crown_spec(dag, lo, hi, C)[0])
    with torch.no_grad():
        sampled = float((conv.module(torch.rand(50_000, 5, generator=torch.Generator().manual_seed(0))) @ C.float().T).min())
    shift = crown + 0.5 * (sampled - crown)  # violated iff Y_0 - Y_2 <= shift
    spec = tmp_path / "p.vnnlib"
    spec.write_text(vnnlib_box([0.0] * 5, [1.0] * 5, 0, 3, extra_outputs=f"(assert (<= Y_0 (+ Y_2 {shift!r})))"))
    out = tmp_path / "r.json"
    r = run_cli("certify", "--model", path, "--spec", spec, "--method", "ibp", "crown", "alpha-crown", "--json", out)
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["status"] == "unknown"
    r = run_cli("certify", "--model", path, "--spec", spec, "--bab-split", "relu", "--timeout", "60", "--json", out)
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["status"] == "holds" and report["method"] == "bab", report
