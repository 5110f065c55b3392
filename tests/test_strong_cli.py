"""`robust attack --suite strong`, the diagnostics in its reports, and `--strict`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from masking_models import ScaledLogits

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "attack-strong.yaml"


@pytest.fixture(scope="module")
def saturated_file(digits_mlp, tmp_path_factory):
    """digits-mlp with logits x 1e4 (a distilled network at T = 1), saved as TorchScript."""
    path = tmp_path_factory.mktemp("sat") / "saturated.pt"
    traced = torch.jit.trace(ScaledLogits(digits_mlp, 1e4).eval(), torch.rand(2, 1, 8, 8))
    torch.jit.save(traced, str(path))
    return path


def test_suite_strong_on_an_ordinary_model(run_cli, tmp_path, digits_mlp):
    out = tmp_path / "r.json"
    r = run_cli("attack", "--model", "digits-mlp", "--suite", "strong", "--eps", "0.1", "--n", "50",
                "--steps", "30", "--queries", "200", "--strict", "--json", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["suite"] == "strong"
    attacks = [row["attack"] for row in report["results"]]
    assert attacks == ["apgd-ce", "apgd-t", "fab-t", "square", "worst-case"]
    worst = report["results"][-1]["robust_accuracy"]
    assert all(worst <= row["robust_accuracy"] for row in report["results"])
    assert report["warnings"] == []
    codes = {c["code"] for c in report["diagnostics"]}
    assert {"vanishing-gradients", "large-eps-not-broken", "margin-stronger-than-ce"} <= codes
    assert all(c["ran_on"] for c in report["diagnostics"])
    assert "Gradient-masking diagnostics" in r.stdout and "strong suite" in r.stdout


def test_strict_fails_on_a_saturated_model_after_writing_the_report(run_cli, tmp_path, saturated_file):
    out = tmp_path / "r.json"
    r = run_cli("attack", "--model", saturated_file, "--data", "digits", "--attack", "fgsm", "pgd",
                "--suite", "strong", "--eps", "0.1", "--n", "50", "--steps", "30", "--queries", "200", "--strict",
                "--json", out)  # fmt: skip
    assert r.exit_code == 1, r.output
    assert "check failed" in r.stderr and "gradient-masking" in r.stderr
    report = json.loads(out.read_text())
    codes = {w["code"] for w in report["warnings"]}
    assert {"margin-stronger-than-ce", "vanishing-gradients", "large-eps-not-broken"} <= codes
    for w in report["warnings"]:
        assert w["message"] and w["advice"] and w["evidence"]
    rows = {row["attack"]: row["robust_accuracy"] for row in report["results"]}
    assert rows["pgd"] > rows["worst-case"] + 0.3  # PGD-CE overestimates; the suite does not
    assert "warning" in r.stdout


def test_warnings_without_strict_exit_zero(run_cli, tmp_path, saturated_file):
    out = tmp_path / "r.json"
    r = run_cli("attack", "--model", saturated_file, "--data", "digits", "--attack", "pgd", "--eps", "0.1",
                "--n", "40", "--json", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    codes = {w["code"] for w in json.loads(out.read_text())["warnings"]}
    assert {"vanishing-gradients", "large-eps-not-broken"} <= codes


def test_plain_attack_report_has_diagnostics(run_cli, tmp_path, digits_mlp):
    out = tmp_path / "r.json"
    r = run_cli("attack", "--model", "digits-mlp", "--attack", "fgsm", "pgd", "--eps", "0.05", "0.1",
                "--n", "60", "--json", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["warnings"] == [] and report["suite"] is None
    status = {c["code"]: c["status"] for c in report["diagnostics"]}
    assert status["iterative-weaker-than-single-step"] == "ok"
    assert status["black-box-stronger-than-white-box"] == "skipped"


def test_bad_input_for_the_new_options(run_cli, digits_mlp):
    r = run_cli("attack", "--model", "digits-mlp", "--suite", "strong", "--queries", "0", "--n", "5")
    assert r.exit_code == 2 and "--queries" in r.stderr
    r = run_cli("attack", "--model", "digits-mlp", "--attack", "apgd-ce", "--backend", "foolbox", "--n", "5")
    assert r.exit_code == 2 and "foolbox" in r.stderr
    r = run_cli("attack", "--model", "digits-mlp", "--suite", "weak")
    assert r.exit_code == 2


def test_example_config_runs(run_cli, tmp_path, digits_mlp):
    out = tmp_path / "r.json"
    r = run_cli("attack", "--config", CONFIG, "--n", "40", "--steps", "20", "--queries", "100", "--json", out)
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["warnings"] == []
    assert {row["attack"] for row in report["results"]} == {"fgsm", "pgd", "apgd-ce", "apgd-t", "fab-t", "square", "worst-case"}
