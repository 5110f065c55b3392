"""Malicious or malformed resume checkpoints, for every trainer: one line, exit 2, payload never runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hostile_files import Payload, one_error_line

TRAINERS = {
    "train": ["train", "--data", "digits", "--epochs", "2", "--warmup", "0", "--train-n", "16", "--eval-n", "8", "--attack-steps", "1"],
    "distill": ["distill", "--data", "digits", "--teacher", "digits-mlp", "--epochs", "2", "--train-n", "16"],
    "train-moe": ["train-moe", "--data", "digits", "--mode", "natural", "--no-dense", "--epochs", "2", "--train-n", "16"],
    "train-ibp": ["train-ibp", "--data", "digits", "--eps", "0.1", "--epochs", "2", "--n-train", "16", "--n", "8"],
}


def _valid_state() -> dict:
    return {
        "epoch": 0, "model": {}, "optimizers": {}, "schedulers": {}, "generators": {},
        "torch_rng": torch.get_rng_state(), "cuda_rng": [], "extra": {},
    }  # fmt: skip


def _with(**changes) -> dict:
    state = _valid_state()
    for k, v in changes.items():
        if v is _DROP:
            state.pop(k)
        else:
            state[k] = v
    return state


_DROP = object()

CHECKPOINTS = {
    "pickle-payload": (lambda marker: {"epoch": 0, "x": Payload(marker)}, "pickles Python objects"),
    "garbage": (b"\x00garbage", "cannot read checkpoint"),
    "empty": (b"", "cannot read checkpoint"),
    "list": (lambda m: [1, 2, 3], "holds a list"),
    "tensor": (lambda m: torch.zeros(3), "holds a Tensor"),
    "missing-keys": (lambda m: {"epoch": 1}, "no model"),
    "no-rng": (lambda m: _with(torch_rng=_DROP), "no torch_rng"),
    "string-epoch": (lambda m: _with(epoch="1"), "not a non-negative integer"),
    "negative-epoch": (lambda m: _with(epoch=-5), "not a non-negative integer"),
    "bool-epoch": (lambda m: _with(epoch=True), "not a non-negative integer"),
    "float-epoch": (lambda m: _with(epoch=1.5), "not a non-negative integer"),
    "model-list": (lambda m: _with(model=[1]), "model is a list"),
    "bad-rng-dtype": (lambda m: _with(torch_rng=torch.zeros(10)), "generator state"),
    "bad-rng-length": (lambda m: _with(torch_rng=torch.zeros(3, dtype=torch.uint8)), "does not match this run"),
    "extra-config-list": (lambda m: _with(extra={"config": [1]}), "wrong type"),
    "wrong-weights": (lambda m: _with(model={"w": torch.zeros(2)}), "does not match this run"),
}


def _write_checkpoint(path: Path, content, marker: Path) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content(marker), path)


# Every trainer reads checkpoints through one Checkpointer: the full set runs for `train`, the
# others get the cases that reach their own loops (payload, structure, epoch, RNG, weights).
SHARED = ("pickle-payload", "list", "string-epoch", "negative-epoch", "bad-rng-length", "wrong-weights")
CASES = [(k, "train") for k in sorted(CHECKPOINTS)] + [(k, t) for t in sorted(TRAINERS) if t != "train" for k in SHARED]


@pytest.mark.parametrize("kind,trainer", CASES)
def test_bad_checkpoint_is_refused(run_cli, tmp_path, trainer, kind):
    content, needle = CHECKPOINTS[kind]
    marker = tmp_path / "RAN"
    out = tmp_path / "m.safetensors"
    _write_checkpoint(tmp_path / "m.ckpt.pt", content, marker)
    line = one_error_line(run_cli(*TRAINERS[trainer], "--out", out, "--resume"))
    assert needle in line, line
    assert "--resume" in line
    assert not marker.exists() and not out.exists()


def test_missing_checkpoint_is_one_line(run_cli, tmp_path):
    line = one_error_line(run_cli(*TRAINERS["train"], "--out", tmp_path / "m.safetensors", "--resume"))
    assert "no checkpoint" in line
