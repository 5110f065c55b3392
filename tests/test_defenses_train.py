"""Adversarial training (`robust train`): robustness gain, resume, CLI behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robustcli.defenses.adversarial import AdversarialConfig, train_adversarial
from robustcli.defenses.evaluation import clean_and_pgd_accuracy
from robustcli.archs import build_arch
from robustcli.core.nn import Normalized
from robustcli.core.checkpoint import Checkpointer
from robustcli.data import load_dataset
from robustcli.zoo import NORMALIZATION

ROOT = Path(__file__).resolve().parents[1]


def digits_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return Normalized(build_arch("digits-mlp"), *NORMALIZATION["digits"])


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


def test_pgd_at_and_trades_raise_pgd_accuracy_over_natural(digits):
    train, test = digits
    x, y, xt, yt = train.x[:800], train.y[:800], test.x[:200], test.y[:200]
    results = {}
    for defense in ("natural", "pgd-at", "trades"):
        model = digits_model(0)
        cfg = AdversarialConfig(defense=defense, eps=0.2, epochs=5, warmup_epochs=1, attack_steps=3, seed=0)
        history = train_adversarial(model, x, y, cfg)
        results[defense] = clean_and_pgd_accuracy(model, xt, yt, 0.2, steps=10)
    assert {"ce", "kl", "loss", "adv_acc"} <= set(history[-1])  # TRADES logs both terms
    assert results["natural"].clean_accuracy > 0.85
    assert results["natural"].pgd_accuracy < 0.3, results
    assert results["pgd-at"].pgd_accuracy > results["natural"].pgd_accuracy + 0.15, results
    # TRADES at beta 6 gains more slowly in 5 short epochs; it must still beat natural training.
    assert results["trades"].pgd_accuracy > results["natural"].pgd_accuracy + 0.03, results


def test_resume_after_a_kill_gives_identical_weights(tmp_path, digits):
    train, _ = digits
    x, y = train.x[:300], train.y[:300]
    cfg = AdversarialConfig(defense="pgd-at", eps=0.2, epochs=3, warmup_epochs=1, attack_steps=3, seed=3)
    reference = digits_model(0)
    train_adversarial(reference, x, y, cfg, checkpointer=Checkpointer(tmp_path / "a.safetensors"))

    class Killed(Exception):
        pass

    def kill_after_first(record):
        if record["epoch"] == 0:
            raise Killed

    ckpt = Checkpointer(tmp_path / "b.safetensors")
    with pytest.raises(Killed):
        train_adversarial(digits_model(0), x, y, cfg, checkpointer=ckpt, on_epoch=kill_after_first)
    resumed = digits_model(99)  # different init: everything must come from the checkpoint
    history = train_adversarial(resumed, x, y, cfg, checkpointer=ckpt, resume=True)
    assert [r["epoch"] for r in history] == [0, 1, 2]
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    lines = [json.loads(line) for line in ckpt.log_path.read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2]


def _train_args(out: Path, epochs: int, *extra: str) -> list[str]:
    return ["train", "--data", "digits", "--arch", "digits-mlp", "--defense", "pgd-at", "--eps", "0.2",
            "--epochs", str(epochs), "--warmup", "1", "--attack-steps", "2", "--eval-steps", "5",
            "--eval-n", "40", "--train-n", "300", "--out", str(out), *extra]  # fmt: skip


def test_cli_resume_matches_uninterrupted_run(run_cli, tmp_path):
    full = tmp_path / "full.safetensors"
    assert run_cli(*_train_args(full, 3)).exit_code == 0
    part = tmp_path / "part.safetensors"
    assert run_cli(*_train_args(part, 2)).exit_code == 0
    r = run_cli(*_train_args(part, 3, "--resume", "--json", str(tmp_path / "r.json")))
    assert r.exit_code == 0, r.output
    a, b = load_file(str(full)), load_file(str(part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    report = json.loads((tmp_path / "r.json").read_text())
    assert [h["epoch"] for h in report["history"]] == [0, 1, 2]
    assert 0 <= report["pgd_accuracy"] <= report["clean_accuracy"] <= 1
    # Resuming with other options is refused, and nothing is overwritten.
    before = part.read_bytes()
    r = run_cli(*_train_args(part, 4, "--resume", "--eps", "0.1"))
    assert r.exit_code == 2 and "different options" in r.output and part.read_bytes() == before


def test_cli_bad_input_exits_2_without_output(run_cli, tmp_path):
    r = run_cli("train", "--data", "digits", "--out", str(tmp_path / "m.pt"))
    assert r.exit_code == 2 and ".safetensors" in r.output and not (tmp_path / "m.pt").exists()
    r = run_cli("train", "--data", "digits", "--epochs", "2", "--warmup", "2", "--out", str(tmp_path / "m.safetensors"))
    assert r.exit_code == 2 and "--warmup" in r.output
    r = run_cli("train", "--data", "digits", "--resume", "--out", str(tmp_path / "m.safetensors"))
    assert r.exit_code == 2 and "no checkpoint" in r.output


def test_config_runs_and_model_loads_for_attack(run_cli, tmp_path):
    out = tmp_path / "at.safetensors"
    r = run_cli(
        "train", "--config", str(ROOT / "configs" / "train-pgd-at.yaml"), "--data", "digits", "--arch", "digits-mlp",
        "--eps", "0.2", "--epochs", "2", "--warmup", "1", "--eval-n", "30", "--eval-steps", "5", "--train-n", "200",
        "--out", str(out), "--json", str(tmp_path / "at.json"),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "PGD-5 acc" in r.stdout
    r = run_cli("attack", "--model", str(out), "--data", "digits", "--n", "30", "--eps", "0.2", "--steps", "5")
    assert r.exit_code == 0, r.output
