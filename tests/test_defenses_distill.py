"""Defensive distillation: scaled logits, vanishing CE gradients, and the attacks that see through it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robustcli.attacks.diagnostics import run_diagnostics
from robustcli.defenses.distillation import attack_distilled, ce_gradient_norms, logit_scale, soft_labels, train_at_temperature
from robustcli.archs import build_arch
from robustcli.core.nn import Normalized
from robustcli.data import load_dataset
from robustcli.zoo import NORMALIZATION

ROOT = Path(__file__).resolve().parents[1]
T = 50.0


def digits_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return Normalized(build_arch("digits-mlp"), *NORMALIZATION["digits"])


@pytest.fixture(scope="module")
def trained():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    kw = dict(epochs=6, lr=1e-2, seed=0)
    teacher = digits_model(0)
    train_at_temperature(teacher, train.x, train.y, temperature=T, **kw)
    student = digits_model(1)
    train_at_temperature(student, train.x, soft_labels(teacher, train.x, T), temperature=T, **kw)
    baseline = digits_model(2)
    train_at_temperature(baseline, train.x, train.y, temperature=1.0, **kw)
    return teacher, student, baseline, test


def test_student_matches_teacher_at_T_and_its_logits_are_scaled(trained):
    teacher, student, baseline, test = trained
    gap = (soft_labels(student, test.x, T) - soft_labels(teacher, test.x, T)).abs().sum(1).mean().item()
    assert gap < 0.15  # the student learned the teacher's soft labels at T
    # Deployed at T = 1 its logits are on the scale of T times a T = 1 model's.
    ratio = logit_scale(student, test.x) / logit_scale(baseline, test.x)
    assert ratio > T / 5, ratio


def test_ce_gradients_vanish_on_the_distilled_model_only(trained):
    _, student, baseline, test = trained
    dist = ce_gradient_norms(student, test.x, test.y)
    base = ce_gradient_norms(baseline, test.x, test.y)
    assert (dist < 1e-12).float().mean() > 0.5
    assert (base < 1e-12).float().mean() < 0.05


def test_ce_attacks_collapse_margin_attacks_succeed_and_diagnostics_flag_it(trained):
    _, student, baseline, test = trained
    x, y = test.x[:60], test.y[:60]
    evaluations = {
        name: attack_distilled(model, x, y, eps=0.2, steps=20, cw_steps=30, cw_search_steps=3)
        for name, model in (("distilled", student), ("baseline", baseline))
    }
    dist, base = ({o.attack: o.success_rate for o in evaluations[k].outcomes} for k in ("distilled", "baseline"))
    assert base["fgsm"] > 0.8 and base["pgd"] > 0.9
    assert dist["fgsm"] < base["fgsm"] - 0.3 and dist["pgd"] < base["pgd"] - 0.3, (dist, base)
    assert dist["pgd-margin"] > 0.9 and dist["apgd-dlr"] > 0.9 and dist["cw"] > 0.95, dist
    flagged = {w.code for w in run_diagnostics(evaluations["distilled"], student, x, y, probe_points=30).warnings}
    assert {"margin-stronger-than-ce", "vanishing-gradients"} <= flagged, flagged
    assert not run_diagnostics(evaluations["baseline"], baseline, x, y, probe_points=30).warnings


def test_distill_cli_evaluate_and_resume(run_cli, tmp_path):
    out = tmp_path / "d.safetensors"
    args = ["distill", "--config", str(ROOT / "configs" / "distill-mnist.yaml"), "--data", "digits",
            "--arch", "digits-mlp", "--temperature", "20", "--epochs", "2", "--train-n", "200",
            "--eval-n", "8", "--eval-eps", "0.2", "--out", str(out)]  # fmt: skip
    r = run_cli(*args, "--json", str(tmp_path / "d.json"))
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "d.json").read_text())
    names = [m["model"] for m in report["evaluation"]["models"]]
    assert names == ["baseline (T=1)", "distilled (T=20)"]
    distilled = report["evaluation"]["models"][1]
    assert set(distilled["attacks"]) >= {"fgsm", "pgd", "pgd-margin", "apgd-dlr", "cw"}
    assert {c["code"] for c in distilled["diagnostics"]} >= {"margin-stronger-than-ce", "vanishing-gradients"}
    assert (tmp_path / "d.teacher.safetensors").exists()
    before = load_file(str(out))
    r = run_cli(*args, "--resume", "--no-evaluate")
    assert r.exit_code == 0, r.output
    after = load_file(str(out))  # every phase was complete: resuming changes no weight
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    r = run_cli("attack", "--model", str(out), "--data", "digits", "--n", "10", "--attack", "fgsm", "--eps", "0.2")
    assert r.exit_code == 0, r.output
