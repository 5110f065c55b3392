"""Requests of `analyze scaling`, `analyze tilting`, `certify --method smoothing`, `threshold`,
`tightness`, `certify --spec` and `vnncomp` (and the eval `strong` check's use of AttackRequest):
each refuses a bad value naming its flag, the command says so in one line with exit code 2, and an
eval check with the same key says `checks[0].<key> ...`."""

from __future__ import annotations

import pytest
from cli_helpers import only_error_line

from robustcli.core.errors import InputError
from robustcli.evalconfig import load_eval_config
from robustcli.requests import (
    AttackRequest,
    OptionError,
    ScalingRequest,
    SmoothingRequest,
    ThresholdRequest,
    TightnessRequest,
    TiltingRequest,
)
from robustcli.verify_requests import SpecRequest, VnncompRequest


@pytest.mark.parametrize(
    "request_type, values, option, words",
    [
        (AttackRequest, {"target": "cat"}, "target", "none, next, random or a class index, got 'cat'"),
        (ScalingRequest, {"points": 2}, "points", "must be >= 3"),
        (ScalingRequest, {"eps_min": 0.5, "eps_max": 0.1}, "eps-min", "below eps-max, got 0.5 and 0.1"),
        (ScalingRequest, {"eps_max": 1.5}, "eps-max", "1.5 exceeds 1"),
        (ScalingRequest, {"attack": ("cw",), "eps_l2_min": 3.0}, "eps-l2-min", "below eps-l2-max"),
        (ScalingRequest, {"max_error": 0.0}, "max-error", "in (0, 1]"),
        (ScalingRequest, {"level": 1.0}, "level", "in (0, 1)"),
        (ScalingRequest, {"resamples": -1}, "resamples", ">= 0"),
        (ScalingRequest, {"min_broken": 0}, "min-broken", ">= 1"),
        (ScalingRequest, {"png": "x.jpg"}, "png", "ending in .png"),
        (SmoothingRequest, {}, "sigma", "needs --sigma"),
        (SmoothingRequest, {"sigma": (0.25, 0.0)}, "sigma", "must be > 0"),
        (SmoothingRequest, {"sigma": (0.25,), "alpha": 1.0}, "alpha", "strictly between 0 and 1"),
        (SmoothingRequest, {"sigma": (0.25,), "samples": 50, "n0": 100}, "n0", "must not exceed --samples (50)"),
        (SmoothingRequest, {"sigma": (0.25,), "samples": 0}, "samples", ">= 1"),
        (SmoothingRequest, {"sigma": (0.25,), "eps": (0.5, -1.0)}, "eps", "radii for smoothing"),
        (ThresholdRequest, {"unsafe_class": (0,), "calibration_share": 1.0}, "calibration-share", "(0, 1)"),
        (ThresholdRequest, {"unsafe_class": (0,), "target_fnr": 0.0}, "target-fnr", "(0, 1)"),
        (ThresholdRequest, {"unsafe_class": (0,), "confidence": 1.5}, "confidence", "(0, 1)"),
        (ThresholdRequest, {"unsafe_class": (0,), "eps": 1.5}, "eps", "[0, 1]"),
        (ThresholdRequest, {"unsafe_class": (0,), "steps": 0}, "steps", ">= 1"),
        (ThresholdRequest, {"unsafe_class": (0,), "attack": "fgsm"}, "attack", "pgd, none"),
        (ThresholdRequest, {"unsafe_class": (0,), "plot": "t.jpg"}, "plot", ".png"),
        (ThresholdRequest, {}, "unsafe-class", "missing"),
        (TightnessRequest, {"eps": 1.5}, "eps", "exceeds 1"),
        (TightnessRequest, {"eps": -0.1}, "eps", ">= 0"),
        (TightnessRequest, {"batch_size": 0}, "batch-size", ">= 1"),
        (TiltingRequest, {"classes": (3,)}, "classes", "two different"),
        (TiltingRequest, {"classes": (3, 3)}, "classes", "two different"),
        (TiltingRequest, {"classes": (-1, 3)}, "classes", "non-negative"),
        (TiltingRequest, {"weight_decay": (0.1,), "model": "m.pt"}, "weight-decay", "with --model"),
        (TiltingRequest, {"weight_decay": (-0.1,)}, "weight-decay", ">= 0"),
        (TiltingRequest, {"max_iter": 0}, "max-iter", ">= 1"),
        (TiltingRequest, {"n": 0}, "n", "positive"),
        (VnncompRequest, {"timeout": 0.0}, "timeout", "must be > 0, got 0.0"),
        (VnncompRequest, {"timeout": -5.0}, "timeout", "must be > 0, got -5.0"),
        (VnncompRequest, {"timeout": float("nan")}, "timeout", "must be > 0"),
        (VnncompRequest, {"timeout": float("inf")}, "timeout", "must be > 0"),
        (VnncompRequest, {"limit": 0}, "limit", "must be >= 1, got 0"),
        (VnncompRequest, {"jobs": 0}, "jobs", "must be >= 1, got 0"),
        (VnncompRequest, {"attack_steps": 0}, "attack-steps", "must be >= 1, got 0"),
        (VnncompRequest, {"attack_restarts": -1}, "attack-restarts", "must be >= 1, got -1"),
        (VnncompRequest, {"alpha_iterations": 0}, "alpha-iterations", "must be >= 1, got 0"),
        (VnncompRequest, {"bab_split": "width"}, "bab-split", "'width' is not one of auto, input, relu"),
        (VnncompRequest, {"bab_bounds": "fresh"}, "bab-bounds", "'fresh' is not one of auto, reuse, refresh"),
        (VnncompRequest, {"method": ("crown-ibp",)}, "method", "'crown-ibp' is not one of attack"),
        (SpecRequest, {"timeout": 0.0}, "timeout", "must be > 0, got 0.0"),
        (SpecRequest, {"pgd_steps": 0}, "pgd-steps", "must be >= 1, got 0"),
        (SpecRequest, {"pgd_restarts": 0}, "pgd-restarts", "must be >= 1, got 0"),
        (SpecRequest, {"alpha_iterations": -2}, "alpha-iterations", "must be >= 1, got -2"),
        (SpecRequest, {"bab_split": "width"}, "bab-split", "is not one of auto, input, relu"),
        (SpecRequest, {"bab_bounds": "never"}, "bab-bounds", "is not one of auto, reuse, refresh"),
        (SpecRequest, {"method": ("crown", "crown-ibp")}, "method", "crown-ibp is not available with --spec"),
        (SpecRequest, {"method": ("attack",)}, "method", "attack is not available with --spec"),
    ],
)
def test_a_bad_value_names_its_flag(request_type, values, option, words):
    with pytest.raises(OptionError) as e:
        request_type(**values)
    assert e.value.option == option
    assert str(e.value).startswith(f"--{option} ") and words in str(e.value), str(e.value)


def test_requests_own_their_defaults():
    scaling = ScalingRequest()
    assert scaling.attacks == ("fgsm", "pgd") and scaling.norms == ("linf",)
    grid = scaling.grid("linf")
    assert len(grid) == 12 and grid[0] < grid[-1] <= 1  # log-spaced within the Linf pixel range
    assert list(ScalingRequest(attack=("cw",), eps_max=9.0).grids()) == ["l2"]  # Linf bounds unused by L2 attacks
    smoothing = SmoothingRequest(sigma=(0.5, 0.25, 0.5), eps=(0.5, 0.0, 0.5))
    assert smoothing.sigma == (0.5, 0.25) and smoothing.radii == (0.0, 0.5)
    assert SmoothingRequest(sigma=0.25).sigma == (0.25,)  # an eval check's single sigma
    assert SmoothingRequest(sigma=(0.25,)).radii == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert ThresholdRequest(unsafe_class=(3, 1, 3)).unsafe == (1, 3)
    with pytest.raises(OptionError, match="--unsafe-class 12 is outside the model's classes 0..9"):
        ThresholdRequest(unsafe_class=(1, 12)).check_classes(10)
    tilting = TiltingRequest()
    assert tilting.classes == (3, 7) and tilting.decays == (0.0, 1e-4, 1e-3, 1e-2, 1e-1)


@pytest.mark.parametrize(
    "args, words",
    [
        (["analyze", "scaling", "--model", "digits-mlp", "--points", "2"], "--points must be >= 3"),
        (["analyze", "scaling", "--model", "digits-mlp", "--eps-max", "1.5"], "--eps-max 1.5 exceeds 1"),
        (["analyze", "scaling", "--model", "digits-mlp", "--level", "1"], "--level must be in (0, 1)"),
        (["analyze", "tilting", "--data", "digits", "--max-iter", "0"], "--max-iter must be >= 1"),
        (["analyze", "tilting", "--data", "digits", "--png", "t.jpg"], "--png t.jpg"),
        (["certify", "--model", "digits-mlp", "--method", "smoothing", "--sigma", "0.25", "--n0", "0"], "--n0 must be >= 1"),
        (["threshold", "--model", "digits-mlp", "--unsafe-class", "0", "--calibration-share", "1.5"],
         "--calibration-share must lie in (0, 1)"),
        (["threshold", "--model", "digits-mlp", "--unsafe-class", "0", "--target-fnr", "2"], "--target-fnr must lie"),
        (["tightness", "--model", "digits-mlp", "--eps", "2"], "--eps 2 exceeds 1"),
        (["attack", "--model", "digits-mlp", "--target", "cat"], "--target must be none, next, random or a class index"),
    ],
)
def test_the_command_says_it_in_one_line(run_cli, tmp_path, args, words):
    out = tmp_path / "r.json"
    line = only_error_line(run_cli(*args, "--json", out))
    assert words in line, line
    assert not out.exists()


EVAL = "model: digits-mlp\nn: 10\nchecks:\n  - type: {type}\n{keys}    gates: [{gate}]\n"


@pytest.mark.parametrize(
    "kind, keys, gate, words",
    [
        ("scaling", {"attack": "fgsm", "eps-max": 1.5}, "gamma > 0", "checks[0].eps-max: 1.5 exceeds 1"),
        ("scaling", {"attack": "fgsm", "eps-min": 0.2, "eps-max": 0.1}, "gamma > 0",
         "checks[0].eps-min: must be > 0 and below eps-max, got 0.2 and 0.1"),
        # an L2 check's eps-min / eps-max are its L2 grid, and a problem is named by the key written
        ("scaling", {"attack": "pgd-l2", "eps-min": 3.0}, "gamma > 0", "checks[0].eps-min: must be > 0 and below eps-max"),
        ("scaling", {"attack": "fgsm", "max-error": 1.5}, "gamma > 0", "checks[0].max-error: must be in (0, 1]"),
        ("smoothing", {"sigma": 0, "eps": 0.25}, "abstention_rate <= 1", "checks[0].sigma: must be > 0"),
        ("smoothing", {"sigma": 0.25, "eps": 0.25, "alpha": 1}, "abstention_rate <= 1",
         "checks[0].alpha: must be strictly between 0 and 1"),
        ("smoothing", {"sigma": 0.25, "eps": 0.25, "samples": 10, "n0": 20}, "abstention_rate <= 1",
         "checks[0].n0: (20) must not exceed --samples (10)"),
        # the strong check's budgets are AttackRequest's: the Linf pixel-range rule
        ("strong", {"eps": 1.5}, "clean_accuracy >= 0", "checks[0].eps: 1.5 exceeds 1"),
    ],
)
def test_the_eval_check_names_the_key(tmp_path, kind, keys, gate, words):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(EVAL.format(type=kind, keys="".join(f"    {k}: {v}\n" for k, v in keys.items()), gate=gate))
    with pytest.raises(InputError) as e:
        load_eval_config(cfg)
    assert words in str(e.value), str(e.value)
    line = 5 + list(keys).index(words.split(".")[1].split(":")[0])
    assert f"c.yaml:{line}:" in str(e.value), str(e.value)


def test_an_l2_strong_check_may_exceed_1(tmp_path):
    """The strong check's budgets are AttackRequest's: with norm l2 they are L2 budgets, not Linf."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(EVAL.format(type="strong", keys="    eps: 4\n    norm: l2\n", gate="clean_accuracy >= 0"))
    assert load_eval_config(cfg).checks[0].options["eps"] == (4.0,)
    cfg.write_text(EVAL.format(type="strong", keys="    eps: 4\n    norm: linf\n", gate="clean_accuracy >= 0"))
    with pytest.raises(InputError, match=r"checks\[0\]\.eps: 4 exceeds 1"):
        load_eval_config(cfg)
