"""The shared training loop (`robustcli.core.training_loop`): a run killed with SIGKILL in the
middle of an epoch and resumed ends with bit-identical weights; options are checked on resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robustcli.core.checkpoint import Checkpointer
from robustcli.core.errors import InputError
from robustcli.core.training_loop import StepContext, descend, train_loop

ROOT = Path(__file__).resolve().parents[1]

# Runs in a child process: trains, and SIGKILLs itself after batch KILL_BATCH of epoch KILL_EPOCH
# (epochs before it are checkpointed; the killed epoch is half done). No Python cleanup runs.
_CHILD = r"""
import os, signal, sys, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
from trainers_for_kill import run
kill_epoch, kill_batch = int(sys.argv[3]), int(sys.argv[4])
seen = {"batches": 0}
def on_batch(n, losses):
    seen["batches"] += 1
    if seen["batches"] == kill_epoch * int(sys.argv[5]) + kill_batch:
        os.kill(os.getpid(), signal.SIGKILL)
run(sys.argv[2], sys.argv[6], resume=False, on_batch=on_batch)
"""


def _kill_then_resume(tmp_path: Path, trainer: str, kill_epoch: int, kill_batch: int) -> None:
    from trainers_for_kill import BATCHES

    out = tmp_path / f"{trainer}.safetensors"
    args = [sys.executable, "-c", _CHILD, str(Path(__file__).parent), trainer, str(kill_epoch), str(kill_batch),
            str(BATCHES[trainer]), str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ckpt = torch.load(Checkpointer(out).checkpoint_path, weights_only=True)
    assert ckpt["epoch"] == kill_epoch - 1  # the kill came in the middle of the next epoch
    return out


@pytest.mark.parametrize("trainer,kill_epoch,kill_batch", [("pgd-at", 1, 3), ("ibp-short", 2, 2)])
def test_sigkill_mid_epoch_then_resume_gives_bit_identical_weights(tmp_path, trainer, kill_epoch, kill_batch):
    from trainers_for_kill import EPOCHS, run

    out = _kill_then_resume(tmp_path, trainer, kill_epoch, kill_batch)
    log = Checkpointer(out).log_path
    log.write_text(log.read_text() + '{"epoch": 1, "lo')  # a line a kill cut short is dropped too
    resumed = run(trainer, str(out), resume=True)
    straight = run(trainer, str(tmp_path / "straight.safetensors"), resume=False)
    assert resumed.keys() == straight.keys()
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(EPOCHS))
    # the check can fail: a run that differs in its seed ends elsewhere
    other = run(trainer, str(tmp_path / "other.safetensors"), resume=False, seed=1)
    assert any(not torch.equal(other[k], straight[k]) for k in straight if other[k].is_floating_point())


def _linear_run(tmp_path: Path, *, epochs: int, lr: float, resume: bool, on_resume=None) -> list[dict]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))

    def step(xb: torch.Tensor, yb: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        for group in opt.param_groups:  # a resumed optimiser state brings the old lr back
            group["lr"] = lr
        loss = F.cross_entropy(model(xb), yb)
        descend(loss, opt, ctx, clip_norm=1.0)
        return {"loss": loss.detach(), "step": torch.tensor(float(ctx.step))}

    run = train_loop(
        model, x, y, step, optimizers={"sgd": opt}, generators={"order": torch.Generator().manual_seed(0)},
        epochs=epochs, batch_size=16, run_config={"lr": lr, "epochs": epochs}, drop_last=True,
        checkpointer=Checkpointer(tmp_path / "lin.safetensors"), resume=resume, on_resume=on_resume,
    )  # fmt: skip
    return run.history


def test_resume_refuses_changed_options_unless_the_trainer_accepts_them(tmp_path):
    history = _linear_run(tmp_path, epochs=1, lr=0.1, resume=False)
    assert len(history) == 1 and history[0]["step"] == pytest.approx(0.5)  # drop_last: 2 steps of 16
    with pytest.raises(InputError, match=r"different options \(lr\)"):
        _linear_run(tmp_path, epochs=2, lr=0.2, resume=True)
    seen = {}
    history = _linear_run(tmp_path, epochs=2, lr=0.2, resume=True, on_resume=seen.update)
    assert seen == {"lr": (0.1, 0.2), "epochs": (1, 2)}
    assert [r["epoch"] for r in history] == [0, 1] and history[1]["step"] == pytest.approx(2.5)


def test_divergence_stops_with_one_line_and_keeps_the_checkpoint(tmp_path):
    _linear_run(tmp_path, epochs=1, lr=0.1, resume=False)
    ckpt = Checkpointer(tmp_path / "lin.safetensors").checkpoint_path
    before = ckpt.read_bytes()
    with pytest.raises(InputError, match="training diverged.*epoch 2.*try a lower --lr"):
        _linear_run(tmp_path, epochs=2, lr=float("inf"), resume=True, on_resume=lambda changed: None)
    assert ckpt.read_bytes() == before
