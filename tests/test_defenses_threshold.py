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


@pytest.mark.parametrize("n", [1, 7, 40, 333])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_clopper_pearson_equals_scipy_exact_intervals(n, confidence):
    """Both ends against scipy's exact binomial intervals, every k (two-sided and one-sided)."""
    from scipy.stats import binomtest

    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        test = binomtest(k, n)
        lo, hi = test.proportion_ci(confidence_level=confidence, method="exact")
        assert clopper_pearson_interval(k, n, confidence) == pytest.approx((lo, hi), rel=1e-9, abs=1e-12)
        _, upper = binomtest(k, n, alternative="less").proportion_ci(confidence_level=confidence, method="exact")
        assert clopper_pearson_upper(k, n, confidence) == pytest.approx(upper, rel=1e-9, abs=1e-12)


def test_chosen_threshold_keeps_the_fnr_below_target_in_95_percent_of_draws():
    """Simulation of the guarantee: calibrate on n unsafe scores, measure the true FNR of the chosen t.

    Scores are uniform, so the true FNR of threshold t is t itself. The bound is one-sided at 95%: the
    true FNR may exceed the target in at most 5% of calibration draws (binomial slack for 400 draws).
    """
    from scipy.stats import binom

    g = torch.Generator().manual_seed(1)
    target, n, draws = 0.1, 200, 400
    exceed = 0
    for _ in range(draws):
        p = torch.rand(n, generator=g, dtype=torch.float64)
        exceed += choose_threshold(p, p, target).threshold > target
    assert exceed <= binom.ppf(0.999, draws, 0.05)
    assert exceed >= 1  # the bound is not vacuous: a conservative-only rule would never exceed


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


def test_bounds_at_the_edges_and_a_target_met_exactly():
    assert clopper_pearson_interval(0, 0) == (0.0, 1.0)  # no trials: nothing is known
    assert clopper_pearson_upper(0, 0) == 1.0
    # A bound equal to the target meets it (<=): k = 3 misses allowed, not 2.
    assert allowed_misses(100, clopper_pearson_upper(3, 100)) == 3
    assert allowed_misses(100, clopper_pearson_upper(3, 100) * (1 - 1e-12)) == 2


def test_misses_count_the_inputs_strictly_below_the_threshold():
    """Block iff p >= t: an unsafe input scoring exactly t is blocked, not missed."""
    p = torch.linspace(0.01, 1.0, 400, dtype=torch.float64)
    c = choose_threshold(p, p, 0.05)
    assert c.threshold == p[c.allowed_misses].item()
    assert c.misses_clean == c.misses_attacked == c.allowed_misses > 0


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
        "--target-fnr", "0.2", "--calibration-share", "0.7", "--eps", "0.2", "--steps", "10",
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
    # At eps 0.2 the attack drives unsafe probabilities down, so the certified threshold must drop
    # below the default 0.5: it blocks more safe inputs and lets fewer attacked unsafe ones through.
    assert report["threshold"] < 0.5
    assert chosen["safe_blocked"]["rate"] >= default["safe_blocked"]["rate"]
    assert chosen["fnr_attacked"]["rate"] < default["fnr_attacked"]["rate"]
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_threshold_cli_exit_2_when_the_target_cannot_be_certified(run_cli, tmp_path, digits_mlp):
    r = run_cli("threshold", "--model", "digits-mlp", "--unsafe-class", "0", "--target-fnr", "0.001",
                "--json", str(tmp_path / "t.json"))  # fmt: skip
    assert r.exit_code == 2
    assert "no threshold can certify" in r.output and "at least 2995" in r.output
    assert not (tmp_path / "t.json").exists()
    r = run_cli("threshold", "--model", "digits-mlp", "--unsafe-class", "12")
    assert r.exit_code == 2 and "outside the model's classes" in r.output
