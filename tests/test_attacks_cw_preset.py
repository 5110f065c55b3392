"""CW presets: the cheap default and the paper's settings, recorded in the JSON report."""

from __future__ import annotations

import json

import pytest

from robustcli.attacks.cw import CW_PRESETS, CarliniWagnerL2
from robustcli.attacks.registry import make_attack


def test_presets_hold_the_papers_and_the_cheap_settings():
    assert CW_PRESETS["paper"] == {"steps": 10_000, "binary_search_steps": 9, "initial_const": 1e-3, "lr": 1e-2}
    assert CW_PRESETS["cheap"] == {"steps": 100, "binary_search_steps": 5, "initial_const": 1e-2, "lr": 0.1}
    paper = make_attack("cw", preset="paper")
    assert (paper.steps, paper.binary_search_steps, paper.initial_const, paper.lr) == (10_000, 9, 1e-3, 1e-2)
    assert paper.settings()["preset"] == "paper"
    assert make_attack("cw").settings()["preset"] == "cheap" == CarliniWagnerL2().preset
    assert make_attack("cw", preset="paper", steps=7).steps == 7  # an explicit --steps overrides the preset
    with pytest.raises(ValueError):
        CarliniWagnerL2.from_preset("fast")


def test_cli_records_the_preset_in_the_report(run_cli, tmp_path, digits_mlp):
    out = tmp_path / "r.json"
    r = run_cli("attack", "--model", "digits-mlp", "--attack", "cw", "--cw-preset", "paper", "--steps", "3",
                "--n", "5", "--json", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    cw = json.loads(out.read_text())["cw"]
    assert cw == {"preset": "paper", "steps": 3, "binary_search_steps": 9, "initial_const": 1e-3, "lr": 1e-2,
                  "confidence": 0.0}  # fmt: skip
    r = run_cli("attack", "--model", "digits-mlp", "--attack", "cw", "--steps", "3", "--n", "5", "--json", out)
    assert json.loads(out.read_text())["cw"]["preset"] == "cheap"
    r = run_cli("attack", "--model", "digits-mlp", "--attack", "pgd", "--steps", "3", "--n", "5", "--json", out)
    assert json.loads(out.read_text())["cw"] is None
    r = run_cli("attack", "--model", "digits-mlp", "--attack", "cw", "--cw-preset", "slow", "--n", "5")
    assert r.exit_code == 2
