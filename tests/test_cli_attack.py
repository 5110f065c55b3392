"""`robust attack` end to end: options, reports, configs and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    # Progress bars (a built-in model training on first use) may precede it; the error is one line.
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: ") and result.stderr.rstrip().endswith(errors[0])
    return errors[0]


def test_attack_table_and_json(run_cli, tmp_path):
    out = tmp_path / "r.json"
    r = run_cli("attack", "--model", "digits-mlp", "--attack", "fgsm", "pgd", "--eps", "0.05", "0.1",
                "--n", "60", "--steps", "10", "--json", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "robust acc" in r.stdout and "worst-case" in r.stdout
    report = json.loads(out.read_text())
    for key in ("command", "model", "data", "n", "seed", "clean_accuracy", "results"):
        assert key in report
    assert report["n"] == 60 and report["command"] == "attack"
    rows = {(row["attack"], row["eps"]): row for row in report["results"]}
    assert set(rows) >= {("fgsm", 0.05), ("pgd", 0.1), ("worst-case", 0.1)}
    for row in report["results"]:
        assert set(row) >= {"attack", "norm", "eps", "robust_accuracy", "success_rate", "median_perturbation", "time_s"}
        assert row["median_perturbation"] is None or row["median_perturbation"] <= row["eps"] + 1e-6
    for key in [("fgsm", 0.05), ("fgsm", 0.1), ("pgd", 0.05), ("pgd", 0.1)]:
        # robust = correct and not broken, success = broken / attacked (the correct points)
        row = rows[key]
        assert row["robust_accuracy"] == pytest.approx(report["clean_accuracy"] * (1 - row["success_rate"]), abs=1e-6)
    assert rows[("pgd", 0.1)]["robust_accuracy"] < report["clean_accuracy"] - 0.2  # an undefended MLP at eps 0.1
    assert rows[("worst-case", 0.1)]["robust_accuracy"] <= rows[("pgd", 0.1)]["robust_accuracy"]


def test_save_adv_and_targeted(run_cli, tmp_path):
    path = tmp_path / "adv.safetensors"
    r = run_cli("attack", "--model", "digits-mlp", "--attack", "pgd", "--eps", "0.3", "--n", "20",
                "--target", "next", "--restarts", "2", "--save-adv", path, "--device", "cpu")  # fmt: skip
    assert r.exit_code == 0, r.output
    saved = load_file(str(path))
    assert saved["y"].shape == (20,) and saved["x_adv/pgd/linf/0.3"].shape == (20, 1, 8, 8)
    npz = tmp_path / "adv.npz"
    assert run_cli("attack", "--model", "digits-mlp", "--eps", "0.1", "--n", "10", "--save-adv", npz).exit_code == 0
    assert set(np.load(npz).files) >= {"y", "x_adv/pgd/linf/0.1"}


def test_foolbox_backend(run_cli, tmp_path):
    out = tmp_path / "fb.json"
    r = run_cli("attack", "--model", "digits-mlp", "--attack", "pgd", "--eps", "0.1", "--n", "40",
                "--steps", "10", "--backend", "foolbox", "--json", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["results"][0]["attack"] == "pgd[foolbox]"


def test_l2_attacks_use_eps_l2(run_cli, tmp_path):
    out = tmp_path / "l2.json"
    r = run_cli("attack", "--model", "digits-mlp", "--attack", "pgd", "pgd-l2", "--eps", "0.1",
                "--eps-l2", "0.7", "--n", "30", "--steps", "5", "--json", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    pairs = {(row["attack"], row["norm"], row["eps"]) for row in json.loads(out.read_text())["results"]}
    assert ("pgd", "linf", 0.1) in pairs and ("pgd-l2", "l2", 0.7) in pairs


def test_config_file_and_override(run_cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: digits-mlp\nattack: fgsm\neps: [0.05, 0.1]\nn: 30\n")
    out = tmp_path / "c.json"
    r = run_cli("attack", "--config", cfg, "--eps", "0.2", "--json", out)
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert [row["eps"] for row in report["results"]] == [0.2] and report["n"] == 30
    cfg.write_text("model: digits-mlp\nepsilon: 0.1\n")
    assert "unknown key 'epsilon'" in _one_error_line(run_cli("attack", "--config", cfg))


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("attack-*.yaml")), ids=lambda p: p.name)
def test_shipped_attack_configs_run(run_cli, tmp_path, monkeypatch, config):
    monkeypatch.chdir(tmp_path)
    # Built-in MNIST models train on the official MNIST, which tests never download: run the
    # config's options on the digits model instead.
    offline = ["--model", "digits-mlp", "--data", "digits"] if "mnist" in config.read_text() else []
    r = run_cli("attack", "--config", config, "--n", "40", "--steps", "5", *offline)
    assert r.exit_code == 0, r.output


def test_models_command(run_cli):
    r = run_cli("models")
    assert r.exit_code == 0 and "mnist-cnn" in r.stdout and "digits-mlp" in r.stdout


class _BadOutput(nn.Module):
    def forward(self, x):
        return x.flatten(1).sum(1)  # (N,), not (N, classes)


@pytest.fixture
def bad_inputs(tmp_path):
    """Files for the bad-input cases, built by the test."""
    np.savez(tmp_path / "nan.npz", x=np.full((3, 1, 8, 8), np.nan, np.float32), y=np.zeros(3, np.int64))
    np.savez(tmp_path / "range.npz", x=np.full((3, 1, 8, 8), 3.0, np.float32), y=np.zeros(3, np.int64))
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 1, 8, 8), np.float32), y=np.zeros(0, np.int64))
    np.savez(tmp_path / "labels.npz", x=np.zeros((3, 1, 8, 8), np.float32), y=np.array([0, 1, 12]))
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    torch.jit.save(torch.jit.script(_BadOutput()), tmp_path / "badout.pt")
    return tmp_path


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--model", "{d}/missing.pt"], "neither a built-in model"),
        (["--model", "{d}/corrupt.pt", "--arch", "digits-mlp", "--data", "digits"], "not a valid model file"),
        (["--model", "digits-mlp", "--data", "mnist-5k"], "input shape"),
        (["--model", "{d}/badout.pt", "--data", "digits"], "(N, classes)"),
        (["--model", "digits-mlp", "--data", "{d}/labels.npz"], "labels go up to 12"),
        (["--model", "digits-mlp", "--eps", "-0.1"], "eps must be >= 0"),
        (["--model", "digits-mlp", "--eps", "1.5"], "exceeds 1"),
        (["--model", "digits-mlp", "--attack", "nope"], "'nope' is not one of"),
        (["--model", "digits-mlp", "--data", "cifar10"], "neither a bundled dataset"),
        (["--model", "digits-mlp", "--data", "{d}/nan.npz"], "NaN"),
        (["--model", "digits-mlp", "--data", "{d}/range.npz"], "[0, 1]"),
        (["--model", "digits-mlp", "--data", "{d}/empty.npz"], "empty"),
        (["--model", "digits-mlp", "--steps", "0"], "--steps must be >= 1"),
        (["--model", "digits-mlp", "--target", "42"], "outside the model's classes"),
        (["--model", "digits-mlp", "--save-adv", "{d}/adv.txt"], ".safetensors or .npz"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_report(run_cli, bad_inputs, args, needle):
    report = bad_inputs / "report.json"
    args = [a.format(d=bad_inputs) for a in args]
    line = _one_error_line(run_cli("attack", *args, "--n", "5", "--json", report))
    assert needle in line
    assert not report.exists()
    assert not list(bad_inputs.glob(".report.json.*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_without_cuda(run_cli):
    assert "CUDA is not available" in _one_error_line(run_cli("attack", "--model", "digits-mlp", "--device", "cuda"))


def test_pickled_model_refused_then_allowed(run_cli, tmp_path, digits_mlp):
    torch.save(digits_mlp, tmp_path / "whole.pt")
    assert "--allow-pickle" in _one_error_line(run_cli("attack", "--model", tmp_path / "whole.pt", "--data", "digits"))
    r = run_cli("attack", "--model", tmp_path / "whole.pt", "--data", "digits", "--allow-pickle", "--n", "10",
                "--eps", "0.1", "--steps", "2")  # fmt: skip
    assert r.exit_code == 0, r.output
