"""The one training loop every trainer plugs a step into: data order, checkpoints, resume, DDP.

A trainer supplies `step(x, y, ctx)`: the optimiser step(s) of one mini-batch, returning its
losses and metrics as a dict of scalar tensors ("loss" is checked for divergence). The loop owns
everything else, once for all trainers (natural, PGD-AT, TRADES, distillation, AdvMoE, IBP,
CROWN-IBP, Gaussian augmentation):

- Data order: `torch.randperm` from `generators["order"]`, a CPU `torch.Generator` seeded by the
  trainer; `drop_last` drops the last partial batch (BatchNorm needs more than one point).
- Checkpoint and resume: after every epoch the JSON-lines log gets one record and then the
  checkpoint (`core.checkpoint.Checkpointer`, written atomically) gets the model, every
  optimiser, every generator, torch's global RNG, the run's options and history. Everything a
  step draws comes from those states and everything a step schedules (eps, lr) is a function of
  `ctx`, so a run killed at any moment (SIGKILL included) and resumed ends with bit-identical
  weights to an uninterrupted one: an epoch the kill cut short is rerun from the last checkpoint,
  and its log line, if written, is dropped on resume.
- Options on resume: the checkpoint's options are compared with this run's. Without `on_resume`
  any difference other than `epochs` is refused; with it, the trainer is told what changed
  (certified training allows, say, a lower lr after a divergence) and decides.
- Divergence: a non-finite "loss" stops the run with `InputError` (the last good checkpoint
  stays); under torchrun all ranks agree first, so they stop together.
- Data parallelism under torchrun (`core.ddp.GradientSync`): each rank runs `step` on its
  contiguous slice of every global batch and an optimiser pre-hook averages the gradients with
  the slice's weight before each optimiser step, so K ranks follow the single-process run (up to
  float summation order for steps without randomness). A step that clips gradients calls
  `descend`, which averages before clipping. Logged averages are over the global batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from robustcli.core import distributed
from robustcli.core.checkpoint import Checkpointer, check_finite
from robustcli.core.ddp import GradientSync, agree_finite, reduce_sums
from robustcli.core.errors import InputError


@dataclass(frozen=True)
class StepContext:
    """Where a step is in the run; schedules (eps ramps, lr decay) are functions of these."""

    epoch: int  # 0-based
    batch: int  # 0-based, within the epoch
    batches: int  # batches per epoch
    sync: GradientSync

    @property
    def step(self) -> int:
        """Global 0-based step: epoch * batches + batch."""
        return self.epoch * self.batches + self.batch


StepFn = Callable[[torch.Tensor, torch.Tensor, StepContext], dict[str, torch.Tensor]]


@dataclass
class TrainingRun:
    history: list[dict[str, Any]] = field(default_factory=list)  # every epoch, restored ones included
    first_epoch: int = 0  # the first epoch this call ran (> 0 after a resume)
    batches_per_epoch: int = 0


def batches_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    if drop_last:
        return max(1, n // batch_size)
    return -(-n // batch_size)


def descend(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    ctx: StepContext,
    *,
    clip_norm: float = 0.0,
    parameters: list[torch.Tensor] | None = None,
) -> None:
    """zero_grad, backward, optional gradient-norm clipping, optimiser step.

    Clipping must see the gradient of the global batch, so under torchrun the ranks' gradients
    are averaged first (`GradientSync.synchronize`; the pre-hook then skips this step).
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_norm > 0:
        ctx.sync.synchronize(optimizer)
        params = parameters if parameters is not None else [p for g in optimizer.param_groups for p in g["params"]]
        nn.utils.clip_grad_norm_(params, clip_norm)
    optimizer.step()


def _changed(saved: dict[str, Any], wanted: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    keys = list(wanted) + [k for k in saved if k not in wanted]
    return {k: (saved.get(k), wanted.get(k)) for k in keys if saved.get(k) != wanted.get(k)}


def train_loop(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    step: StepFn,
    *,
    optimizers: dict[str, torch.optim.Optimizer],
    generators: dict[str, torch.Generator],
    epochs: int,
    batch_size: int,
    run_config: dict[str, Any],
    drop_last: bool = False,
    checkpointer: Checkpointer | None = None,
    resume: bool = False,
    on_resume: Callable[[dict[str, tuple[Any, Any]]], None] | None = None,
    epoch_start: Callable[[int], None] | None = None,
    epoch_end: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    on_batch: Callable[[int, dict[str, float]], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainingRun:
    """Run epochs `first..epochs-1` of `step` over (x, y) in a seeded order.

    `generators["order"]` draws the batch order; the others (attack starts, noise) belong to the
    step and are only saved, restored and, under torchrun, split per rank here. `epoch_start(e)`
    runs before epoch e (e.g. sets the lr); `epoch_end(record)` turns the epoch's averages
    ({"epoch", <step outputs averaged over points>, "points", "time_s"}) into the record that is logged,
    checkpointed and passed to `on_epoch` (e.g. adds held-out accuracy).
    """
    if "order" not in generators:
        raise ValueError("generators must include 'order', the data-order generator")
    if resume and checkpointer is None:
        raise ValueError("resume needs a checkpointer")
    n = len(y)
    if n < 1:
        raise InputError("no training points")
    device = next(model.parameters()).device
    run_config = {**run_config, "n_train": int(n)}
    batches = batches_per_epoch(n, batch_size, drop_last)
    run = TrainingRun(batches_per_epoch=batches)
    if checkpointer is not None:
        if resume:
            run.first_epoch, extra = checkpointer.load(model=model, optimizers=optimizers, generators=generators)
            changed = _changed(extra.get("config", {}), run_config)
            if on_resume is not None:
                on_resume(changed)
            elif any(k != "epochs" for k in changed):
                diff = sorted(k for k in changed if k != "epochs")
                raise InputError(
                    f"--resume: the checkpoint was written with different options ({', '.join(diff)}); "
                    "use the same options or start without --resume"
                )
            run.history = list(extra.get("history", []))[: run.first_epoch]
        else:
            checkpointer.start_fresh()
    sync = GradientSync(model, list(optimizers.values()))  # a no-op without torchrun
    # ranks draw different attack noise for their different points (no-op in one process)
    distributed.per_rank_generators({k: g for k, g in generators.items() if k != "order"})
    try:
        for epoch in range(run.first_epoch, epochs):
            if epoch_start is not None:
                epoch_start(epoch)
            model.train()
            t0 = time.perf_counter()
            order = torch.randperm(n, generator=generators["order"])
            sums: dict[str, float] = {}
            seen = 0.0
            for b in range(batches):
                idx = order[b * batch_size : (b + 1) * batch_size]
                part = sync.local(idx)
                ctx = StepContext(epoch=epoch, batch=b, batches=batches, sync=sync)
                losses = step(x[part.index].to(device), y[part.index].to(device), ctx)
                if "loss" in losses:
                    loss = agree_finite(losses["loss"].detach())  # every rank stops together
                    if checkpointer is not None:
                        check_finite(loss, epoch, b, checkpointer)
                    elif not torch.isfinite(loss).all():
                        raise InputError(f"training diverged at epoch {epoch + 1}, step {b + 1}; try a lower --lr")
                values = {name: float(v) for name, v in losses.items()}
                for name, v in values.items():
                    sums[name] = sums.get(name, 0.0) + v * part.points
                seen += part.points
                if on_batch is not None:
                    on_batch(len(idx), values)
            totals = reduce_sums({**sums, "__seen": seen})
            seen_all = max(totals.pop("__seen"), 1.0)
            record: dict[str, Any] = {"epoch": epoch, **{k: s / seen_all for k, s in totals.items()}}
            record["points"] = int(seen_all)
            record["time_s"] = time.perf_counter() - t0
            if epoch_end is not None:
                record = epoch_end(record)
            run.history.append(record)
            if checkpointer is not None:
                # log first: a kill between the two leaves a log line that resume drops
                checkpointer.log(record)
                checkpointer.save(
                    epoch, model=model, optimizers=optimizers, generators=generators,
                    extra={"config": run_config, "history": run.history},
                )  # fmt: skip
            if on_epoch is not None:
                on_epoch(record)
    finally:
        sync.finish()
    model.eval()
    return run
