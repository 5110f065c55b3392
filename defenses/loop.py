"""The epoch loop every trainer in `defenses/` shares: data order, checkpoints, resume, logging.

A trainer supplies `step(x, y, epoch)`, which does its optimiser step(s) on one mini-batch and
returns its losses (a dict of scalar tensors; "loss" is checked for divergence). The loop owns
the data order (a seeded `torch.Generator`), the per-epoch atomic checkpoint with every RNG
state, the JSON-lines log and resuming, so a run killed after epoch k and resumed ends with the
same weights as an uninterrupted one.

Under torchrun (`robustcli.ddp.GradientSync`) each rank runs `step` on its slice of every global
batch of `batch_size` points and an optimiser pre-hook averages the gradients across ranks
before each optimiser step, so the weights follow the single-process run (exactly, up to float
summation order, for steps without randomness); the logged averages are over the global batch.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn

from robustcli.core import distributed
from robustcli.core.checkpoint import Checkpointer, check_finite
from robustcli.core.ddp import GradientSync, agree_finite, reduce_sums
from robustcli.core.errors import InputError

StepFn = Callable[[torch.Tensor, torch.Tensor, int], dict[str, torch.Tensor]]


def train_epochs(
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
    checkpointer: Checkpointer | None = None,
    resume: bool = False,
    on_batch: Callable[[int, dict[str, float]], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run `epochs` epochs of `step` over (x, y) in a seeded order; return one record per epoch.

    `generators["order"]` (a CPU generator) draws the batch order; the others (e.g. attack
    random starts) belong to the step and are only saved and restored here. `run_config` is
    stored in the checkpoint; resuming with a different one (other than `epochs`) is refused.
    """
    if "order" not in generators:
        raise ValueError("generators must include 'order', the data-order generator")
    device = next(model.parameters()).device
    run_config = {**run_config, "n_train": int(len(y))}
    history: list[dict[str, Any]] = []
    first = 0
    if checkpointer is not None:
        if resume:
            first, extra = checkpointer.load(model=model, optimizers=optimizers, generators=generators)
            saved = {k: v for k, v in extra.get("config", {}).items() if k != "epochs"}
            wanted = {k: v for k, v in run_config.items() if k != "epochs"}
            if saved != wanted:
                diff = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
                raise InputError(
                    f"--resume: the checkpoint was written with different options ({', '.join(diff)}); "
                    "use the same options or start without --resume"
                )
            history = list(extra.get("history", []))
        else:
            checkpointer.start_fresh()
    n = len(y)
    sync = GradientSync(model, list(optimizers.values()))  # a no-op without torchrun
    # ranks draw different attack noise for their different points (no-op in one process)
    distributed.per_rank_generators({k: g for k, g in generators.items() if k != "order"})
    for epoch in range(first, epochs):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=generators["order"])
        sums: dict[str, float] = {}
        for k, i in enumerate(range(0, n, batch_size)):
            idx = order[i : i + batch_size]
            part = sync.local(idx)
            losses = step(x[part.index].to(device), y[part.index].to(device), epoch)
            if "loss" in losses:
                loss = agree_finite(losses["loss"].detach())  # every rank stops together
                if checkpointer is not None:
                    check_finite(loss, epoch, k, checkpointer)
                elif not torch.isfinite(loss).all():
                    raise InputError(f"training diverged at epoch {epoch + 1}, step {k + 1}; try a lower --lr")
            values = {name: float(v) for name, v in losses.items()}
            for name, v in values.items():
                sums[name] = sums.get(name, 0.0) + v * part.points
            if on_batch is not None:
                on_batch(len(idx), values)
        sums = reduce_sums(sums)
        record = {"epoch": epoch, **{name: s / n for name, s in sums.items()}, "time_s": time.perf_counter() - t0}
        history.append(record)
        if checkpointer is not None:
            checkpointer.log(record)
            checkpointer.save(
                epoch,
                model=model,
                optimizers=optimizers,
                generators=generators,
                extra={"config": run_config, "history": history},
            )
        if on_epoch is not None:
            on_epoch(record)
    sync.finish()
    model.eval()
    return history
