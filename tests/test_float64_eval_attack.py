"""`robust eval`, `robust attack`, `robust tightness` and `robust analyze scaling` run a float64 model
at its own precision: a float64 ONNX file keeps its weights, a float64 TorchScript or .pt2 model
(`model.double()` exported) runs as it is, on float64 copies of the (float32) data points.

The eval gate tests use the two-class files of test_certify_float64_data.py (logits
(relu(x) - relu(w x) + b, 0), w = 1 +- 2^-28, b = +-2^-29): their float32-rounded networks
(w = 1.0f) give the opposite verdicts to the files. The attack tests use the built-in digits MLP
with its normalisation folded into the first layer, saved as float64 and float32 models with the
same (float32) numbers: on such ordinary weights the two precisions must agree.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto  # noqa: E402
from test_certify_float64_data import TINY, _data, _ort_logits, _two_class_net  # noqa: E402

N = 100  # digits test points for the attack comparisons: one point is 1%
CLOSE = 0.03  # float64 vs float32 robust accuracy: the attacks' steps round differently


# ---- eval: certify and attack gates on the float64 file ---------------------------------------------


def _gate_config(path: Path, net: Path, data: Path, eps: float) -> Path:
    """Two checks whose gates hold only where the network is robust on the whole ball: CROWN (exact
    here: ReLUs stable on these balls) with IBP, and PGD."""
    path.write_text(f"""\
model: {net}
data: {data}
checks:
  - name: cert
    type: certify
    method: [ibp, crown]
    eps: {eps}
    gates: [verified_accuracy >= 1.0, clean_accuracy >= 1.0]
  - name: pgd
    type: attack
    attack: [pgd]
    eps: {eps}
    gates: [robust_accuracy >= 1.0]
""")
    return path


def _eval(run_cli, config: Path, out: Path, *args) -> tuple[int, dict]:
    r = run_cli("eval", config, "--json", out, *args)
    assert r.exit_code in (0, 1), r.output
    report = json.loads(out.read_text())
    return r.exit_code, report


def _gates(report: dict) -> dict[str, tuple[float | None, bool]]:
    return {f"{c['name']}: {g['gate']}": (g["value"], g["passed"]) for c in report["checks"] for g in c["gates"]}


def _rounded_copy(path: Path, second_weight: float, bias: float) -> Path:
    """The float32 file of the network `load_model` used to make of the float64 one (w = 1.0f)."""
    return _two_class_net(path, float(np.float32(second_weight)), float(np.float32(bias)), dtype=TensorProto.FLOAT)


def test_eval_gates_fail_on_a_float64_file_that_its_rounded_network_passes(tmp_path, run_cli):
    """w = 1 + 2^-28, b = 2^-29, x = 0.25, eps 0.5: the file classifies x = 0.75 as class 1. The
    rounded network passes every gate (the config is satisfiable); the file fails both the verified
    and the PGD gate, since eval now bounds and attacks the file's own weights."""
    w, b = 1.0 + 2.0**-28, TINY
    net = _two_class_net(tmp_path / "neg.onnx", w, b)
    assert _ort_logits(net, 0.25).argmax() == 0 and _ort_logits(net, 0.75).argmax() == 1
    data = _data(tmp_path / "neg.npz", 0.25)
    rounded = _rounded_copy(tmp_path / "neg32.onnx", w, b)
    code, report = _eval(run_cli, _gate_config(tmp_path / "r.yaml", rounded, data, 0.5), tmp_path / "r.json")
    assert code == 0 and report["model_dtype"] == "float32", _gates(report)
    code, report = _eval(run_cli, _gate_config(tmp_path / "f.yaml", net, data, 0.5), tmp_path / "f.json")
    gates = _gates(report)
    assert code == 1 and report["model_dtype"] == "float64" and report["clean_accuracy"] == 1.0
    assert gates["cert: verified_accuracy >= 1 at eps=0.5"] == (0.0, False), gates
    assert gates["cert: clean_accuracy >= 1"] == (1.0, True), gates
    assert gates["pgd: robust_accuracy >= 1 at eps=0.5"] == (0.0, False), gates  # PGD finds x > 0.5 in float64
    (cert,) = [c for c in report["checks"] if c["name"] == "cert"]
    margins = {r["method"]: r["mean_margin_lower_bound"] for r in cert["details"]["results"]}
    assert margins["crown"] == pytest.approx(-(2.0**-30), rel=1e-6)  # the file's minimum, not the rounded +2^-29


def test_eval_gates_pass_on_a_float64_file_that_its_rounded_network_fails(tmp_path, run_cli):
    """The mirror (w = 1 - 2^-28, b = -2^-29, x = 0.875, eps 0.125): the file's margin is >= 2^-30 on
    the ball, so CROWN verifies it and PGD cannot break it; the rounded network misclassifies x."""
    w, b = 1.0 - 2.0**-28, -TINY
    net = _two_class_net(tmp_path / "pos.onnx", w, b)
    data = _data(tmp_path / "pos.npz", 0.875)
    code, report = _eval(run_cli, _gate_config(tmp_path / "f.yaml", net, data, 0.125), tmp_path / "f.json")
    gates = _gates(report)
    assert code == 0 and report["model_dtype"] == "float64", gates
    assert gates["cert: verified_accuracy >= 1 at eps=0.125"] == (1.0, True), gates
    assert gates["pgd: robust_accuracy >= 1 at eps=0.125"] == (1.0, True), gates
    rounded = _rounded_copy(tmp_path / "pos32.onnx", w, b)
    code, report = _eval(run_cli, _gate_config(tmp_path / "r.yaml", rounded, data, 0.125), tmp_path / "r.json")
    assert code == 1 and report["clean_accuracy"] == 0.0, _gates(report)


# ---- float64 TorchScript / .pt2 / ONNX twins of an ordinary model ------------------------------------


@pytest.fixture(scope="module")
def twins(tmp_path_factory, digits_mlp) -> dict[str, Path]:
    """digits-mlp with its normalisation folded into the first Linear (so nothing promotes float32
    input to float64 before the first layer), saved as float32 TorchScript, float64 TorchScript,
    float64 .pt2 and float64 / float32 ONNX. A float64 copy of these weights fails on float32 input."""
    folder = tmp_path_factory.mktemp("twins")
    inner, mean, std = digits_mlp.model, digits_mlp.mean.flatten()[0], digits_mlp.std.flatten()[0]
    folded = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    with torch.no_grad():
        folded[1].weight.copy_(inner[1].weight / std)
        folded[1].bias.copy_(inner[1].bias - inner[1].weight.sum(1) * mean / std)
        folded[3].load_state_dict(inner[3].state_dict())
    x = torch.rand(4, 1, 8, 8)
    f64 = copy.deepcopy(folded).double()
    with pytest.raises(RuntimeError):
        f64(x)
    paths = {"f32.pt": folded, "f64.pt": f64}
    for name, model in paths.items():
        torch.jit.save(torch.jit.trace(model, x.to(model_dtype(model))), folder / name)
    torch.export.save(torch.export.export(f64, (x.double(),), dynamic_shapes=({0: torch.export.Dim("batch")},)),
                      folder / "f64.pt2")
    for name, model in (("f64.onnx", f64), ("f32.onnx", folded)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, x[:1].to(model_dtype(model)), str(folder / name), dynamo=False, opset_version=13,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "b"}, "output": {0: "b"}})
    return {p.name: p for p in folder.iterdir()}


def model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _attack(run_cli, model: Path, out: Path, *args: str) -> dict:
    r = run_cli("attack", "--model", model, "--data", "digits", "--n", N, "--json", out, *args)
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text())


def _robust(report: dict) -> dict[str, float]:
    return {f"{o['attack']}@{o['eps']:g}": o["robust_accuracy"] for o in report["results"]}


@pytest.mark.parametrize("name", ["f64.pt", "f64.pt2", "f64.onnx"])
def test_attack_runs_a_float64_model_in_float64_with_its_float32_twins_figures(twins, tmp_path, run_cli, name):
    """Was: the TorchScript / .pt2 model failed at the data check with 'does not accept the data's input
    shape' (float32 data into float64 weights); the ONNX file was attacked as a rounded float32 copy."""
    args = ("--attack", "fgsm", "pgd", "--eps", "0.05", "0.1", "--steps", "10")
    ref = _attack(run_cli, twins["f32.pt"], tmp_path / "ref.json", *args)
    got = _attack(run_cli, twins[name], tmp_path / "got.json", *args)
    assert ref["model_dtype"] == "float32" and got["model_dtype"] == "float64"
    assert got["clean_accuracy"] == ref["clean_accuracy"] > 0.9
    a, b = _robust(got), _robust(ref)
    assert a.keys() == b.keys() and len(a) == 6  # fgsm, pgd and the worst case at two budgets
    for k in a:
        assert abs(a[k] - b[k]) <= CLOSE, (k, a[k], b[k])
    assert a["pgd@0.1"] < got["clean_accuracy"] - 0.1  # the attack does break points in float64


def test_attack_on_float64_with_the_strong_suite_and_every_output(twins, tmp_path, run_cli):
    """The strong suite, a targeted CW, the diagnostics, --save-adv, --html and --png on a float64 .pt2."""
    report = _attack(run_cli, twins["f64.pt2"], tmp_path / "a.json", "--attack", "cw", "--target", "next",
                     "--eps", "0.1", "--suite", "strong", "--queries", "50", "--steps", "5",
                     "--save-adv", tmp_path / "adv.npz", "--html", tmp_path / "a.html", "--png", tmp_path / "a.png")
    assert report["model_dtype"] == "float64" and report["targeted"]
    assert {r["attack"] for r in report["results"]} >= {"cw", "apgd-ce", "square"}
    assert report["diagnostics"]
    adv = np.load(tmp_path / "adv.npz")
    assert any(k.startswith("x_adv/") and adv[k].dtype == np.float64 for k in adv.files)
    assert (tmp_path / "a.html").stat().st_size > 0 and (tmp_path / "a.png").stat().st_size > 0


def test_attack_finds_the_counterexample_that_exists_only_in_float64(tmp_path, run_cli):
    """PGD on the float64 file breaks x = 0.25 at eps 0.5 (x = 0.75 is class 1); on its rounded
    network, which main attacked, nothing inside the ball is misclassified."""
    net = _two_class_net(tmp_path / "neg.onnx", 1.0 + 2.0**-28, TINY)
    data = _data(tmp_path / "neg.npz", 0.25)
    rounded = _rounded_copy(tmp_path / "neg32.onnx", 1.0 + 2.0**-28, TINY)
    for model, robust in ((net, 0.0), (rounded, 1.0)):
        r = run_cli("attack", "--model", model, "--data", data, "--attack", "pgd", "--eps", "0.5",
                    "--json", tmp_path / "o.json")
        assert r.exit_code == 0, r.output
        report = json.loads((tmp_path / "o.json").read_text())
        assert report["clean_accuracy"] == 1.0 and _robust(report)["pgd@0.5"] == robust, report


def test_float32_model_attack_is_unchanged(twins, tmp_path, run_cli, digits_test):
    """A float32 model still runs in float32 on float32 data: the CLI's figures are `evaluate`'s."""
    from robustcli.attacks.evaluate import evaluate
    from robustcli.attacks.registry import make_attack
    from robustcli.models import load_model

    report = _attack(run_cli, twins["f32.pt"], tmp_path / "a.json", "--attack", "pgd", "--eps", "0.1",
                     "--steps", "10")
    module = load_model(str(twins["f32.pt"])).module
    direct = evaluate(module, digits_test.x[:N], digits_test.y[:N], [(make_attack("pgd", steps=10), [0.1])],
                      device=torch.device("cpu"))
    assert report["model_dtype"] == "float32"
    assert _robust(report)["pgd@0.1"] == direct.outcomes[0].robust_accuracy
    assert direct.outcomes[0].perturbation.dtype == torch.float32


def test_eval_runs_every_check_type_on_a_float64_model(twins, tmp_path, run_cli):
    """attack with the masking diagnostics, strong, certify and smoothing checks on a float64
    TorchScript model: every gate evaluated, figures close to the float32 twin's."""
    config = """\
model: {model}
data: digits
n: 60
checks:
  - name: a
    type: attack
    attack: [fgsm, pgd]
    eps: [0.1]
    steps: 10
    gates: [no_masking_warnings, robust_accuracy >= 0.0]
  - name: s
    type: strong
    eps: [0.1]
    steps: 5
    queries: 50
    gates: [robust_accuracy >= 0.0]
  - name: c
    type: certify
    method: [ibp, crown]
    eps: 0.01
    pgd-steps: 5
    gates: [verified_accuracy >= 0.0]
  - name: r
    type: smoothing
    sigma: 0.25
    eps: [0.25]
    samples: 100
    n0: 20
    gates: [certified_accuracy >= 0.0]
"""
    values = {}
    for name in ("f32.pt", "f64.pt"):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(config.format(model=twins[name]))
        code, report = _eval(run_cli, cfg, tmp_path / f"{name}.json", "--html", tmp_path / f"{name}.html")
        assert code == 0, _gates(report)
        assert (tmp_path / f"{name}.html").stat().st_size > 0
        assert report["model_dtype"] == ("float64" if name == "f64.pt" else "float32")
        values[name] = _gates(report)
    for gate, (v64, _) in values["f64.pt"].items():
        v32 = values["f32.pt"][gate][0]
        if gate.startswith("r:"):  # noise drawn in float64: other samples of the same distribution
            assert 0.0 <= v64 <= 1.0
        elif v32 is not None:
            assert abs(v64 - v32) <= 0.05, (gate, v64, v32)


# ---- tightness, analyze scaling, and the float32 commands --------------------------------------------


@pytest.mark.parametrize("name", ["f64.pt", "f64.pt2", "f64.onnx"])
def test_tightness_of_a_float64_model_is_measured_in_float64(twins, tmp_path, run_cli, name):
    def run(model: Path, *args: str) -> dict:
        r = run_cli("tightness", "--model", model, "--data", "digits", "--n", 30, "--eps", 0.1,
                    "--json", tmp_path / "t.json", *args)
        assert r.exit_code == 0, r.output
        return json.loads((tmp_path / "t.json").read_text())

    at_init = ("--at-init",) if name.endswith(".onnx") else ("--no-at-init",)  # TorchScript cannot re-init
    got, ref = run(twins[name], *at_init), run(twins["f32.onnx"], *at_init)
    assert got["model_dtype"] == "float64" and ref["model_dtype"] == "float32"
    for key in ("tau_mean", "tau_median", "exact_radius_mean", "ibp_radius_mean"):
        assert got[key] == pytest.approx(ref[key], rel=1e-5), key
    assert got["pairs"] == ref["pairs"] > 0
    if at_init[0] == "--at-init":
        assert 0 < got["at_init"]["tau_mean"] <= 1


def test_analyze_scaling_runs_a_float64_model(twins, tmp_path, run_cli):
    reports = {}
    for name in ("f32.pt", "f64.pt"):
        r = run_cli("analyze", "scaling", "--model", twins[name], "--data", "digits", "--n", 60, "--attack", "fgsm",
                    "--points", 4, "--json", tmp_path / f"{name}.json")
        assert r.exit_code == 0, r.output
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert reports["f64.pt"]["model_dtype"] == "float64"
    assert reports["f64.pt"]["clean_accuracy"] == reports["f32.pt"]["clean_accuracy"]


def test_threshold_and_tilting_run_a_float64_model(twins, tmp_path, run_cli, digits_test):
    """Both read data beside the workload's (a calibration file; the two classes' test points): those
    are cast to the model's precision too. Figures as the float32 twin's up to the attacks' rounding."""
    np.savez(tmp_path / "cal.npz", x=digits_test.x[:200].numpy(), y=digits_test.y[:200].numpy())
    got = {}
    for name in ("f32.pt", "f64.pt"):
        r = run_cli("threshold", "--model", twins[name], "--data", "digits", "--unsafe-class", 0, "--eps", 0.05,
                    "--steps", 10, "--target-fnr", 0.2, "--calibration-data", tmp_path / "cal.npz",
                    "--json", tmp_path / "th.json")
        assert r.exit_code == 0, r.output
        th = json.loads((tmp_path / "th.json").read_text())
        r = run_cli("analyze", "tilting", "--model", twins[name], "--data", "digits", "--json", tmp_path / "ti.json")
        assert r.exit_code == 0, r.output
        got[name] = th, json.loads((tmp_path / "ti.json").read_text())
    (th64, ti64), (th32, ti32) = got["f64.pt"], got["f32.pt"]
    assert th64["model_dtype"] == ti64["model_dtype"] == "float64" and th32["model_dtype"] == "float32"
    assert th64["threshold"] == pytest.approx(th32["threshold"], abs=0.02)
    assert th64["test"]["chosen"]["fnr_clean"]["n"] == th32["test"]["chosen"]["fnr_clean"]["n"] > 0
    assert ti64["pair_accuracy"] == ti32["pair_accuracy"]
    assert ti64["angle_deg"]["median"] == pytest.approx(ti32["angle_deg"]["median"], rel=1e-5)


def test_a_model_failing_on_data_of_another_dtype_is_named_for_its_dtype(twins, digits_test):
    """Where a model meets data of another precision (a float64 model on float32 data), the one line
    names the two dtypes instead of blaming the input shape."""
    from robustcli.core.errors import InputError
    from robustcli.models import load_model
    from robustcli.session import check_model_on_data

    module = load_model(str(twins["f64.pt"])).module
    with pytest.raises(InputError, match="computes in float64 and fails on this command's float32 data") as e:
        check_model_on_data(module, digits_test.head(4), torch.device("cpu"))
    assert "input shape" not in str(e.value) and "\n" not in str(e.value)


def test_distill_takes_a_float64_teacher(twins, tmp_path, run_cli):
    """The teacher runs in float64 on float64 copies of the training points; its soft labels (targets)
    come back in float32, so the float32 student learns what it learns from the float32 twin."""
    from robustcli.defenses.distillation import soft_labels
    from robustcli.models import load_model

    reports = {}
    for name in ("f32.pt", "f64.pt"):
        r = run_cli("distill", "--data", "digits", "--teacher", twins[name], "--arch", "digits-mlp", "--epochs", 1,
                    "--n-train", 200, "--no-evaluate", "--out", tmp_path / f"{name}.safetensors",
                    "--json", tmp_path / f"{name}.json")
        assert r.exit_code == 0, r.output
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert abs(reports["f64.pt"]["test_accuracy"] - reports["f32.pt"]["test_accuracy"]) <= 0.03
    x = torch.rand(16, 1, 8, 8)
    a = soft_labels(load_model(str(twins["f64.pt"])).module, x, 20.0)
    b = soft_labels(load_model(str(twins["f32.pt"])).module, x, 20.0)
    assert a.dtype == torch.float32 and torch.allclose(a, b, atol=1e-6)


def test_attack_foolbox_backend_on_a_float64_model(twins, tmp_path, run_cli):
    pytest.importorskip("foolbox")
    args = ("--attack", "pgd", "--eps", "0.1", "--steps", "10")
    ours = _attack(run_cli, twins["f64.pt"], tmp_path / "ours.json", *args)
    fb = _attack(run_cli, twins["f64.pt"], tmp_path / "fb.json", *args, "--backend", "foolbox")
    assert fb["model_dtype"] == "float64"
    assert abs(fb["results"][0]["robust_accuracy"] - ours["results"][0]["robust_accuracy"]) <= 0.05
