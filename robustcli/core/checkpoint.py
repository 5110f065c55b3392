"""Resumable training: atomic per-epoch checkpoints and a JSON-lines log beside the output file.

For `--out run.safetensors` the checkpoint is `run.ckpt.pt` and the log `run.log.jsonl`. A
checkpoint holds the model, optimiser and scheduler states, every RNG state the run draws from
(torch's global generators and the run's own `torch.Generator`s) and the epoch, so a run killed
after epoch k and resumed ends with the same weights as an uninterrupted one. Checkpoints hold
only tensors and plain values and are read back with `weights_only=True`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustcli.core import distributed
from robustcli.core.errors import InputError, first_line
from robustcli.core.files import atomic_path
from robustcli.core.torchload import is_pickle_refusal


def _stem(out: Path) -> Path:
    return out.with_suffix("") if out.suffix else out


class Checkpointer:
    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.checkpoint_path = _stem(self.out).with_name(_stem(self.out).name + ".ckpt.pt")
        self.log_path = _stem(self.out).with_name(_stem(self.out).name + ".log.jsonl")

    def save(
        self,
        epoch: int,
        *,
        model: nn.Module,
        optimizers: dict[str, torch.optim.Optimizer],
        schedulers: dict[str, Any] | None = None,
        generators: dict[str, torch.Generator] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Record that `epoch` (0-based) is complete (rank 0 writes; other ranks return at once)."""
        if not distributed.is_main():
            return
        state = {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in (schedulers or {}).items()},
            "generators": {k: g.get_state() for k, g in (generators or {}).items()},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "extra": extra or {},
        }
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def load(
        self,
        *,
        model: nn.Module,
        optimizers: dict[str, torch.optim.Optimizer],
        schedulers: dict[str, Any] | None = None,
        generators: dict[str, torch.Generator] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Restore everything in place; return (next epoch to run, extra)."""
        # Rank 0 reads; every rank gets the state or the same error (no rank is left waiting).
        state, problem = distributed.broadcast_from_main(self._read() if distributed.is_main() else (None, None))
        if problem is not None:
            raise InputError(problem)
        try:
            model.load_state_dict(state["model"])
            for k, o in optimizers.items():
                o.load_state_dict(state["optimizers"][k])
            for k, s in (schedulers or {}).items():
                s.load_state_dict(state["schedulers"][k])
            for k, g in (generators or {}).items():
                g.set_state(state["generators"][k])
            torch.set_rng_state(state["torch_rng"])
            if state["cuda_rng"] and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
            raise InputError(
                f"--resume: checkpoint {self.checkpoint_path} does not match this run "
                f"({first_line(e)}); use the same options or start without --resume"
            ) from None
        distributed.per_rank_rng()
        next_epoch = int(state["epoch"]) + 1
        if distributed.is_main():
            self._truncate_log(next_epoch)
        return next_epoch, state["extra"]

    def _read(self) -> tuple[dict[str, Any] | None, str | None]:
        """(state, None) or (None, what is wrong)."""
        if not self.checkpoint_path.exists():
            return None, f"--resume: no checkpoint at {self.checkpoint_path}; start without --resume"
        try:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a pickle of Python objects, a truncated or foreign file
            why = "it pickles Python objects, which a checkpoint never does" if is_pickle_refusal(e) else first_line(e)
            return None, f"--resume: cannot read checkpoint {self.checkpoint_path} ({why}); start without --resume"
        problem = checkpoint_problem(state)
        if problem:
            return None, f"--resume: checkpoint {self.checkpoint_path} is malformed ({problem}); start without --resume"
        return state, None

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line and flush it to disk (rank 0 only)."""
        if not distributed.is_main():
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.log_path, "a") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def start_fresh(self) -> None:
        """A new run: drop a stale log and checkpoint from an earlier run with the same --out."""
        if not distributed.is_main():
            return
        self.log_path.unlink(missing_ok=True)
        self.checkpoint_path.unlink(missing_ok=True)

    def _truncate_log(self, next_epoch: int) -> None:
        """Drop log lines of epochs after the checkpoint (written before a crash), and a line a
        kill cut short."""
        if not self.log_path.exists():
            return
        keep = [line for line in self.log_path.read_text().splitlines() if _epoch_of(line) < next_epoch]
        with atomic_path(self.log_path) as tmp:
            tmp.write_text("".join(line + "\n" for line in keep))


def _epoch_of(line: str) -> float:
    """The epoch of a log line; infinity for a blank or partly written one (so it is dropped)."""
    try:
        record = json.loads(line)
    except ValueError:
        return math.inf
    return record.get("epoch", -1) if isinstance(record, dict) else math.inf


_SECTIONS = ("model", "optimizers", "schedulers", "generators", "extra")


def checkpoint_problem(state: Any) -> str | None:
    """What is wrong with the structure of a loaded checkpoint, or None if it has the saved shape."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a checkpoint"
    missing = [k for k in ("epoch", *_SECTIONS, "torch_rng", "cuda_rng") if k not in state]
    if missing:
        return f"no {', '.join(missing)}"
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        return f"epoch is {epoch!r}, not a non-negative integer"
    for k in _SECTIONS:
        if not isinstance(state[k], dict):
            return f"{k} is a {type(state[k]).__name__}, not a mapping"
    extra = state["extra"]
    if not isinstance(extra.get("config", {}), dict) or not isinstance(extra.get("history", []), list):
        return "extra config/history have the wrong type"
    rng = state["torch_rng"]
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.dim() != 1:
        return "torch_rng is not a generator state (a uint8 vector)"
    if not isinstance(state["cuda_rng"], (list, tuple)):
        return "cuda_rng is not a list"
    return None


def check_finite(loss: torch.Tensor, epoch: int, step: int, checkpointer: Checkpointer) -> None:
    """Stop a diverged run with a clear message; the last good checkpoint stays on disk."""
    if not torch.isfinite(loss).all():
        kept = (
            f"the last good checkpoint is kept at {checkpointer.checkpoint_path} (use --resume after changing options)"
            if checkpointer.checkpoint_path.exists()
            else "no checkpoint was written yet"
        )
        raise InputError(
            f"training diverged: loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}; {kept}; "
            "try a lower --lr"
        )
