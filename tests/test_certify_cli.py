"""`robust certify` and `robust tightness` end to end on the built-in digits MLP."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import only_error_line

import robustcli.certify.lirpa
from robustcli.certify.lirpa import lirpa_available
from robustcli.certify.verify import CertifyOutcome, SoundnessError, check_soundness


def test_certify_reports_and_orders_accuracies(run_cli, tmp_path, digits_mlp):
    out = tmp_path / "cert.json"
    methods = ["ibp", "crown-ibp"] if lirpa_available() else ["ibp"]
    r = run_cli("certify", "--model", "digits-mlp", "--n", "60", "--eps", "0.01", "0.05", "--method", *methods,
                "--pgd-steps", "10", "--json", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "verified" in r.stdout and "ibp" in r.stdout
    report = json.loads(out.read_text())
    assert report["command"] == "certify" and report["n"] == 60
    assert len(report["results"]) == 2 * len(methods)
    for row in report["results"]:
        assert row["verified_accuracy"] <= row["pgd_accuracy"] <= row["clean_accuracy"]
    ibp = {row["eps"]: row for row in report["results"] if row["method"] == "ibp"}
    assert ibp[0.01]["verified_accuracy"] > ibp[0.05]["verified_accuracy"]  # a trained MLP: some points certify


def test_certify_config_runs(run_cli, digits_mlp):
    # The shipped config with the model swapped for the fast digits one (flags override the file).
    r = run_cli("certify", "--config", "configs/certify-mnist.yaml", "--model", "digits-mlp", "--data", "digits",
                "--n", "40", "--pgd-steps", "5")  # fmt: skip
    assert r.exit_code == 0, r.output
    r = run_cli("tightness", "--config", "configs/tightness-mnist.yaml", "--model", "digits-mlp", "--data", "digits",
                "--n", "40")  # fmt: skip
    assert r.exit_code == 0, r.output


def test_tightness_command(run_cli, tmp_path, digits_mlp):
    out = tmp_path / "t.json"
    r = run_cli("tightness", "--model", "digits-mlp", "--n", "50", "--eps", "0.1", "--json", out)
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert 0 < report["tau_median"] <= 1 and 0 < report["tau_mean"] <= 1
    assert report["exact_radius_mean"] < report["ibp_radius_mean"]


@pytest.mark.parametrize("eps", ["1.5", "-0.1", "nan"])
def test_eps_out_of_range(run_cli, eps, tmp_path):
    out = tmp_path / "x.json"
    line = only_error_line(run_cli("certify", "--model", "digits-mlp", "--eps", eps, "--json", out))
    assert "eps" in line and not out.exists()


@pytest.mark.parametrize("factory,layer", [("silu_digits_mlp", "SiLU"), ("tanhshrink_digits_cnn", "Tanhshrink")])
def test_non_monotone_layer_certifies_with_ibp_and_tightness_names_it(run_cli, tmp_path, factory, layer):
    import certify_nets

    path = tmp_path / "net.pt"
    torch.save(getattr(certify_nets, factory)().state_dict(), path)
    r = run_cli("certify", "--model", path, "--arch", f"certify_nets:{factory}", "--data", "digits", "--n", "5",
                "--pgd-steps", "2")
    assert r.exit_code == 0, r.output
    line = only_error_line(
        run_cli("tightness", "--model", path, "--arch", f"certify_nets:{factory}", "--data", "digits", "--n", "5")
    )
    assert layer in line


def test_missing_auto_lirpa_says_how_to_install_and_ibp_still_works(run_cli, monkeypatch, digits_mlp):
    def missing():
        raise ImportError("No module named 'auto_LiRPA'")

    monkeypatch.setattr(robustcli.certify.lirpa, "import_auto_lirpa", missing)
    line = only_error_line(run_cli("certify", "--model", "digits-mlp", "--n", "5", "--method", "lirpa-crown"))
    assert "pip install --no-deps auto-lirpa==0.3" in line and "--method ibp" in line
    r = run_cli("certify", "--model", "digits-mlp", "--n", "5", "--method", "ibp", "--pgd-steps", "2")
    assert r.exit_code == 0, r.output
    # CROWN and alpha-CROWN are native: they need no auto_LiRPA
    r = run_cli("certify", "--model", "digits-mlp", "--n", "5", "--method", "crown", "alpha-crown", "--pgd-steps", "2",
                "--alpha-iterations", "2")
    assert r.exit_code == 0, r.output


def test_a_verified_point_broken_by_pgd_fails_loudly():
    yes, no = torch.tensor([True, True]), torch.tensor([True, False])
    bad = CertifyOutcome("ibp", "linf", 0.1, yes, yes, no, torch.tensor([0.5, 0.2]), 0.0)
    with pytest.raises(SoundnessError, match="point 1 is verified by ibp"):
        check_soundness(bad)
    with pytest.raises(SoundnessError, match="misclassified"):
        check_soundness(CertifyOutcome("ibp", "linf", 0.1, no, yes, no, torch.tensor([0.5, 0.2]), 0.0))
    check_soundness(CertifyOutcome("ibp", "linf", 0.1, yes, no, yes, torch.tensor([-1.0, 0.2]), 0.0))


def test_certify_l2(run_cli, tmp_path, digits_mlp):
    out = tmp_path / "l2.json"
    r = run_cli("certify", "--model", "digits-mlp", "--n", "30", "--norm", "l2", "--eps", "0.1", "0.5",
                "--pgd-steps", "10", "--json", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["results"]
    assert [row["norm"] for row in rows] == ["l2", "l2"]
    assert rows[0]["verified_accuracy"] >= rows[1]["verified_accuracy"]
    assert all(row["verified_accuracy"] <= row["pgd_accuracy"] <= row["clean_accuracy"] for row in rows)


def test_tightness_at_init_row(run_cli, tmp_path, digits_mlp):
    out = tmp_path / "t.json"
    r = run_cli("tightness", "--model", "digits-mlp", "--n", "40", "--at-init", "--seed", "3", "--json", out)
    assert r.exit_code == 0, r.output
    assert "digits-mlp at init (seed 3)" in r.stdout
    report = json.loads(out.read_text())
    init = report["at_init"]
    assert init["seed"] == 3 and 0 < init["tau_mean"] <= 1 and init["pairs"] == report["pairs"]
    assert init["tau_mean"] != report["tau_mean"]  # a different network: trained vs fresh
