"""Certified training end to end: it raises IBP-verified accuracy, resumes exactly, stops on NaN."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from robustcli.certify.training import ibp_verified_accuracy, recipe_config, train_ibp
from robustcli.commands.train_ibp import build_model
from robustcli.data import load_dataset
from robustcli.training import train_natural

EPS = 0.1
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


def test_short_run_raises_verified_accuracy_above_untrained_and_natural(digits):
    train, test = digits
    untrained = build_model("digits-mlp-bn", "digits", (), (), "ibp", seed=0)
    _, untrained_verified = ibp_verified_accuracy(untrained, test.x, test.y, EPS)

    natural = build_model("digits-mlp-bn", "digits", (), (), "default", seed=0)
    train_natural(natural, train, epochs=15, seed=0)
    natural_clean, natural_verified = ibp_verified_accuracy(natural, test.x, test.y, EPS)
    assert natural_clean > 0.9  # a real baseline, not a broken one

    model = build_model("digits-mlp-bn", "digits", (), (), "ibp", seed=0)
    config = recipe_config("short", EPS, 10, warmup=4, lr_milestones=(8,), batch_size=32)
    result = train_ibp(model, train.x, train.y, config)
    clean, verified = ibp_verified_accuracy(model, test.x, test.y, EPS)
    assert len(result.history) == 10 and result.history[-1].eps == EPS
    assert verified > 0.35, (verified, clean)
    assert verified > untrained_verified + 0.3
    assert verified > natural_verified + 0.3, (verified, natural_verified)


def _tiny_args(out: Path, epochs: int) -> list[str]:
    return [
        "train-ibp", "--data", "digits", "--arch", "digits-mlp-bn", "--eps", "0.1", "--out", str(out),
        "--epochs", str(epochs), "--start", "1", "--warmup", "2", "--lr-milestones", "3",
        "--batch-size", "64", "--n-train", "320", "--holdout", "64", "--n", "40", "--pgd-steps", "3",
    ]  # fmt: skip


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_interrupted_then_resumed_run_ends_with_identical_weights(run_cli, tmp_path, monkeypatch):
    full = tmp_path / "full.safetensors"
    r = run_cli(*_tiny_args(full, 4), "--json", tmp_path / "full.json")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "full.json").read_text())
    assert len(report["history"]) == 4 and report["final"]["n"] == 40
    assert {"clean_accuracy", "pgd_accuracy", "ibp_verified_accuracy"} <= set(report["final"])
    assert "IBP-verified accuracy" in r.stdout and "training log" in r.stdout

    # Ctrl-C during epoch 3: the checkpoint of epoch 2 stays and the message says --resume.
    import robustcli.certify.training as training

    real = training.train_ibp

    def interrupted(*args, on_epoch=None, **kwargs):
        def hook(stats):
            on_epoch(stats)
            if stats.epoch == 1:
                raise KeyboardInterrupt

        return real(*args, on_epoch=hook, **kwargs)

    part = tmp_path / "part.safetensors"
    monkeypatch.setattr(training, "train_ibp", interrupted)
    r = run_cli(*_tiny_args(part, 4))
    assert r.exit_code == 130
    assert "--resume" in r.stderr and "epoch 2" in r.stderr
    assert not part.exists()  # no model file from an unfinished run
    ckpt = tmp_path / "part.ckpt.pt"
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    monkeypatch.setattr(training, "train_ibp", real)

    r = run_cli(*_tiny_args(part, 4), "--resume", "--json", tmp_path / "part.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "part.json").read_text())["resumed_from_epoch"] == 2
    a, b = _weights(full), _weights(part)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(line) for line in (tmp_path / "part.log.jsonl").read_text().splitlines()]
    assert [rec["epoch"] for rec in log] == [0, 1, 2, 3]

    # Running k epochs, then resuming to N, gives the same weights too.
    short = tmp_path / "short.safetensors"
    assert run_cli(*_tiny_args(short, 2)).exit_code == 0
    assert run_cli(*_tiny_args(short, 4), "--resume").exit_code == 0
    c = _weights(short)
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(run_cli, tmp_path):
    out = tmp_path / "m.safetensors"
    args = [
        "train-ibp", "--data", "digits", "--arch", "digits-mlp", "--recipe", "vanilla", "--eps", "0.1",
        "--out", str(out), "--batch-size", "64", "--n-train", "320", "--holdout", "32", "--n", "20",
        "--pgd-steps", "2", "--start", "1", "--warmup", "1",
    ]  # fmt: skip
    assert run_cli(*args, "--epochs", "1").exit_code == 0
    ckpt = tmp_path / "m.ckpt.pt"
    before = ckpt.read_bytes()
    r = run_cli(*args, "--epochs", "3", "--resume", "--lr", "1e30")
    assert r.exit_code == 2
    assert "changed options (epochs 1 -> 3, lr 0.0005 -> 1e+30)" in r.stderr
    assert "training diverged" in r.stderr and "epoch 2" in r.stderr and str(ckpt) in r.stderr
    assert "Traceback" not in r.output
    assert ckpt.read_bytes() == before  # the last good checkpoint is untouched


def test_short_recipe_needs_batchnorm_and_bad_input_exits_2(run_cli, tmp_path):
    r = run_cli("train-ibp", "--data", "digits", "--arch", "digits-mlp", "--eps", "0.1", "--out", tmp_path / "x.safetensors")
    assert r.exit_code == 2 and "BatchNorm" in r.stderr and "--recipe vanilla" in r.stderr
    r = run_cli("train-ibp", "--data", "digits", "--eps", "0.1", "--out", tmp_path / "x.safetensors", "--resume")
    assert r.exit_code == 2 and "no checkpoint" in r.stderr
    r = run_cli("train-ibp", "--data", "digits", "--eps", "2", "--out", tmp_path / "x.safetensors")
    assert r.exit_code == 2
    r = run_cli("train-ibp", "--data", "digits", "--eps", "0.1", "--out", tmp_path / "x.pt")
    assert r.exit_code == 2 and ".safetensors" in r.stderr
    assert not list(tmp_path.iterdir())


def test_example_configs(run_cli, tmp_path, monkeypatch):
    from robustcli.commands.train_ibp import command

    # config keys are the long flag names a user types (`reg` for --reg/--no-reg)
    options = {o[2:].replace("-", "_") for p in command.params for o in p.opts if o.startswith("--")}
    for path in CONFIGS.glob("train-ibp-*.yaml"):
        keys = {str(k).replace("-", "_") for k in yaml.safe_load(path.read_text())}
        assert keys <= options, (path.name, keys - options)
    monkeypatch.chdir(tmp_path)
    r = run_cli("train-ibp", "--config", CONFIGS / "train-ibp-digits-tiny.yaml", "--json", "tiny.json")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "tiny.json").read_text())
    assert report["final"]["ibp_verified_accuracy"] > 0.2  # certified training did something
    from robustcli.models import load_model

    loaded = load_model(str(tmp_path / "digits-ibp.safetensors"))  # no --arch needed
    assert loaded.arch == "digits-mlp-bn" and loaded.meta["trained_on"] == "digits:train"


@pytest.mark.slow
def test_mnist_example_config_runs(run_cli, tmp_path, monkeypatch):
    """Slow only because parsing the bundled MNIST takes 10-30 s on a loaded machine."""
    monkeypatch.chdir(tmp_path)
    # The mnist example parses and starts (cut down to seconds by command-line overrides; on the
    # bundled subset, since tests never download the official MNIST).
    r = run_cli(
        "train-ibp", "--config", CONFIGS / "train-ibp-mnist.yaml", "--data", "mnist-5k", "--epochs", "2", "--start", "1", "--warmup", "1",
        "--lr-milestones", "1", "--n-train", "128", "--holdout", "32", "--n", "20", "--pgd-steps", "1",
        "--batch-size", "64", "--json", "mnist.json",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    mnist = json.loads((tmp_path / "mnist.json").read_text())
    assert mnist["arch"] == "mnist-cnn-bn" and mnist["config"]["eps"] == 0.1 and (tmp_path / "mnist-ibp.safetensors").exists()
