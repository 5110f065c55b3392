"""High-stakes filter thresholds: Clopper-Pearson bounds, the threshold search, the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustcli.defenses.thresholds import (
    CalibrationTooSmall,
    allowed_misses,
    attacked_unsafe_probability,
    choose_threshold,
    clopper_pearson_interval,
    clopper_pearson_upper,
    min_calibration_size,
    unsafe_probability,
)

ROOT = Path(__file__).resolve().parents[1]


def test_clopper_pearson_matches_closed_forms():
    n = 300
    # k = 0: the upper bound solves (1 - p)^n = 0.05.
    assert clopper_pearson_upper(0, n) == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-9)
    # k = n - 1: the lower end of the two-sided interval of k = n solves p^n = 0.025.
    lo, hi = clopper_pearson_interval(n, n)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / n), rel=1e-9)
    assert clopper_pearson_upper(3, 100) > 3 / 100
    assert min_calibration_size(0.001) == 2995  # the rule of three: about 3 / target
    assert allowed_misses(2994, 0.001) == -1 and allowed_misses(2995, 0.001) == 0


def test_threshold_is_the_highest_whose_upper_bound_meets_the_target():
    g = torch.Generator().manual_seed(0)
    p_clean = torch.rand(500, generator=g) * 0.5 + 0.5
    p_attacked = p_clean * torch.rand(500, generator=g)  # the attack only lowers p
    target = 0.05
    c = choose_threshold(p_clean, p_attacked, target)
    misses_c = int((p_clean < c.threshold).sum())
    misses_a = int((p_attacked < c.threshold).sum())
    assert misses_a == c.misses_attacked and misses_c == c.misses_clean
    assert clopper_pearson_upper(misses_a, 500) <= target and clopper_pearson_upper(misses_c, 500) <= target
    assert c.fnr_upper_attacked <= target and c.misses_attacked == c.allowed_misses > 0
    # Any higher threshold lets one more attacked unsafe input through and breaks the bound.
    above = p_attacked[p_attacked > c.threshold].min().item()
    assert clopper_pearson_upper(int((p_attacked < above + 1e-12).sum()), 500) > target


def test_too_small_calibration_set_fails_with_a_clear_message():
    p = torch.full((100,), 0.9)
    with pytest.raises(CalibrationTooSmall, match="at least 2995 unsafe calibration inputs"):
        choose_threshold(p, p, 0.001)
    with pytest.raises(CalibrationTooSmall, match="no unsafe inputs"):
        choose_threshold(p[:0], p[:0], 0.1)


def test_attack_only_lowers_the_unsafe_probability(digits_mlp, digits_test):
    unsafe = torch.tensor([0])
    x = digits_test.x[digits_test.y == 0][:20]
    clean = unsafe_probability(digits_mlp, x, unsafe)
    attacked = attacked_unsafe_probability(digits_mlp, x, unsafe, 0.1, steps=10)
    assert (attacked <= clean).all()
    assert attacked.median() < clean.median() * 0.9


def test_threshold_cli_reports_and_pins_the_threshold(run_cli, tmp_path, digits_mlp):
    r = run_cli(
        "threshold", "--config", str(ROOT / "configs" / "threshold-mnist.yaml"), "--model", "digits-mlp",
        "--target-fnr", "0.2", "--calibration-share", "0.7", "--eps", "0.05", "--steps", "5",
        "--plot", str(tmp_path / "t.png"), "--json", str(tmp_path / "t.json"),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "t.json").read_text())
    cal = report["calibration"]
    assert cal["fnr_upper_attacked"] <= 0.2 and cal["fnr_upper_clean"] <= 0.2
    assert 0 < report["threshold"] <= 1 and report["threshold"] == cal["threshold"]
    chosen, default = report["test"]["chosen"], report["test"]["default_0.5"]
    lo, hi = chosen["fnr_attacked"]["ci95"]
    assert lo <= chosen["fnr_attacked"]["rate"] <= hi
    if report["threshold"] < 0.5:  # a lower threshold blocks at least as much
        assert chosen["safe_blocked"]["rate"] >= default["safe_blocked"]["rate"]
        assert chosen["fnr_attacked"]["rate"] <= default["fnr_attacked"]["rate"]
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_threshold_cli_exit_2_when_the_target_cannot_be_certified(run_cli, tmp_path, digits_mlp):
    r = run_cli("threshold", "--model", "digits-mlp", "--unsafe-class", "0", "--target-fnr", "0.001",
                "--json", str(tmp_path / "t.json"))  # fmt: skip
    assert r.exit_code == 2
    assert "no threshold can certify" in r.output and "at least 2995" in r.output
    assert not (tmp_path / "t.json").exists()
    r = run_cli("threshold", "--model", "digits-mlp", "--unsafe-class", "12")
    assert r.exit_code == 2 and "outside the model's classes" in r.output
