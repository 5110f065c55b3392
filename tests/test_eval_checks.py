"""`robust eval` check types beyond `attack`: masking diagnostics, the strong suite, scaling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn


class _Scale(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * 1e4


def digits_eval_config(path: Path, n: int, checks: str) -> Path:
    """Write an eval config for the built-in digits MLP on its first n test points with `checks`
    (the YAML list under `checks:`, indented by two spaces)."""
    path.write_text(f"model: digits-mlp\nn: {n}\nchecks:\n{checks}")
    return path


@pytest.fixture(scope="module")
def saturated_model(tmp_path_factory, digits_mlp):
    """digits-mlp with logits x 1e4 (what defensive distillation at T=100 deployed at T=1 gives)."""
    path = tmp_path_factory.mktemp("models") / "saturated.pt"
    torch.jit.trace(nn.Sequential(digits_mlp, _Scale()).eval(), torch.rand(2, 1, 8, 8)).save(str(path))
    return path


def test_masking_gate_fails_on_a_saturated_softmax_and_holds_on_the_plain_model(run_cli, tmp_path, saturated_model):
    text = """\
model: {model}
data: digits
n: 40
checks:
  - name: masking
    type: attack
    attacks: [fgsm, pgd]
    eps: 0.1
    steps: 10
    gates: [no_masking_warnings, masking_warnings == 0]
"""
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.format(model=saturated_model))
    r = run_cli("eval", bad, "--json", tmp_path / "bad.json")
    assert r.exit_code == 1, r.output
    report = json.loads((tmp_path / "bad.json").read_text())
    gates = {g["gate"]: g for g in report["checks"][0]["gates"]}
    assert not gates["no_masking_warnings"]["passed"]
    assert "vanishing-gradients" in gates["no_masking_warnings"]["message"]
    assert gates["masking_warnings == 0"]["value"] >= 1
    good = tmp_path / "good.yaml"
    good.write_text(text.format(model="digits-mlp"))
    r = run_cli("eval", good)
    assert r.exit_code == 0, r.output


def test_strong_check_is_at_least_as_strong_as_its_extra_attacks(run_cli, tmp_path):
    cfg = digits_eval_config(tmp_path / "s.yaml", 24, """\
  - name: strong
    type: strong
    eps: [0.1]
    steps: 10
    queries: 100
    attacks: [pgd]
    extra_steps: 10
    gates:
      - robust_accuracy <= 1.0
      - metric: robust_accuracy
        attack: pgd
        op: "<="
        value: 1.0
"""
    )
    r = run_cli("eval", cfg, "--json", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "s.json").read_text())
    worst, pgd = (g["value"] for g in report["checks"][0]["gates"])
    assert worst <= pgd
    assert report["checks"][0]["details"]["diagnostics"]
    # The gates compare the measured value: at it they pass, a hair below it they fail.
    at_value = cfg.read_text().replace("robust_accuracy <= 1.0", f"robust_accuracy <= {worst}")
    cfg.write_text(at_value.replace("value: 1.0", f"value: {pgd}"))
    assert run_cli("eval", cfg).exit_code == 0
    cfg.write_text(at_value.replace("value: 1.0", f"value: {pgd - 0.01}"))
    r = run_cli("eval", cfg, "--json", tmp_path / "s2.json")
    assert r.exit_code == 1, r.output
    assert [g["passed"] for g in json.loads((tmp_path / "s2.json").read_text())["checks"][0]["gates"]] == [True, False]


def test_scaling_check_without_a_fit_fails_with_the_reason(run_cli, tmp_path):
    cfg = digits_eval_config(
        tmp_path / "p.yaml",
        30,
        "  - type: scaling\n    attacks: fgsm\n    eps_min: 0.0001\n    eps_max: 0.001\n    points: 3\n    gates: [gamma > 0]\n",
    )
    r = run_cli("eval", cfg, "--markdown", tmp_path / "p.md")
    assert r.exit_code == 1
    assert "no power-law fit" in (tmp_path / "p.md").read_text()


def test_certify_check_gates_per_method_and_any_method(run_cli, tmp_path):
    cfg = digits_eval_config(tmp_path / "c.yaml", 40, """\
  - name: cert
    type: certify
    methods: [ibp]
    eps: [0.01, 0.05]
    pgd_steps: 5
    gates:
      - verified_accuracy >= 0.0 at eps=0.05
      - metric: verified_accuracy
        method: ibp
        op: ">="
        value: 0.0
        eps: 0.05
      - pgd_accuracy >= 0.0 at eps=0.05
      - clean_accuracy >= 0.0
"""
    )
    r = run_cli("eval", cfg, "--json", tmp_path / "c.json")
    assert r.exit_code == 0, r.output
    any_method, ibp, pgd, clean = (g["value"] for g in json.loads((tmp_path / "c.json").read_text())["checks"][0]["gates"])
    assert any_method == ibp  # one method: the union is that method
    assert ibp <= pgd <= clean  # verified <= PGD-robust <= clean
    # Each gate compares its own measured value: raising one threshold past it fails that gate alone.
    text = cfg.read_text()
    tight = text.replace("verified_accuracy >= 0.0", f"verified_accuracy >= {any_method}")
    tight = tight.replace("pgd_accuracy >= 0.0", f"pgd_accuracy >= {pgd}").replace("clean_accuracy >= 0.0", f"clean_accuracy >= {clean}")
    cfg.write_text(tight)
    assert run_cli("eval", cfg).exit_code == 0
    cfg.write_text(tight.replace(f"clean_accuracy >= {clean}", f"clean_accuracy >= {clean + 0.01}"))
    r = run_cli("eval", cfg, "--json", tmp_path / "c2.json")
    assert r.exit_code == 1, r.output
    assert [g["passed"] for g in json.loads((tmp_path / "c2.json").read_text())["checks"][0]["gates"]] == [True, True, True, False]
    cfg.write_text(text)
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace("method: ibp", "method: crown"))
    r = run_cli("eval", bad)
    assert r.exit_code == 2 and "bad.yaml:11:" in r.stderr and "crown" in r.stderr
