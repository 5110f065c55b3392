"""Data-parallel training on torchrun: one gradient average per optimiser step, over the global batch.

Every trainer runs in `core.training_loop`, whose steps call `backward()` and `optimizer.step()`
themselves (an inner attack, two optimisers as in AdvMoE, gradient clipping as in certified
training). `GradientSync` makes such a loop data-parallel with one strategy for all of them:

    sync = GradientSync(model, optimizers)          # every rank starts from rank 0's weights
    for idx in global_batches:                      # same seeded order on every rank
        part = sync.local(idx)                      # this rank's contiguous share, and its weight
        step(x[part.index], y[part.index])          # backward(); [sync.synchronize(opt); clip]; opt.step()
    model = sync.finish()                           # plain BatchNorm layers again

An optimiser step pre-hook averages the ranks' gradients (one all_reduce of the flattened
gradients), each weighted by `len(slice) * world / len(batch)`, so the average is exactly the
gradient of the global batch's mean loss whatever the world size; with identical gradients and
identical starting weights every rank's optimiser takes the same step, so K ranks reproduce one
process's weights up to float summation order. This is the reduction DDP's reducer performs,
done at the optimiser step instead of inside a wrapped forward, so the loss may use the model in
any way (interval bounds walking its layers, an attack's inner loop).

BatchNorm: on CUDA, layers become `torch.nn.SyncBatchNorm` (statistics over the global batch,
as one process would compute them). torch's SyncBatchNorm has no CPU kernel, so on CPU (gloo)
each rank normalises with its own slice's statistics and the running statistics come from rank 0
(broadcast after each step): that changes the recipe's numbers, and a warning says so.

Randomness inside a step (random starts of a training attack, dropout) comes from per-rank
streams (`distributed.per_rank_rng`, `per_rank_generators`), so ranks draw different noise;
such runs match a single process in distribution, not bit for bit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustcli.core import distributed


@dataclass
class LocalBatch:
    index: torch.Tensor  # this rank's point indices (a contiguous slice of the global batch)
    weight: float  # multiply the slice's mean loss by this before backward()

    @property
    def points(self) -> int:
        """Points this rank contributes (0 for the stand-in point of a rank left without any)."""
        return len(self.index) if self.weight else 0


def local_batch(global_index: torch.Tensor, *, rank: int | None = None, world: int | None = None) -> LocalBatch:
    """This rank's contiguous share of a global batch and the weight that makes DDP's average exact.

    A global batch smaller than the world leaves some ranks without a point; they still take
    part in the collective step (DDP needs every rank) on the batch's first point with weight 0.
    """
    r = distributed.rank() if rank is None else rank
    k = distributed.world_size() if world is None else world
    n = len(global_index)
    if k == 1:
        return LocalBatch(global_index, 1.0)
    part = torch.tensor_split(global_index, k)[r]
    if len(part) == 0:
        return LocalBatch(global_index[:1], 0.0)
    return LocalBatch(part, len(part) * k / n)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def reduce_sums(sums: dict[str, float]) -> dict[str, float]:
    """Sum per-rank running totals (loss x points, correct, seen) so logs describe the global batch."""
    if not distributed.is_distributed():
        return dict(sums)
    keys = sorted(sums)
    t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return {k: v.item() for k, v in zip(keys, t)}


def agree_finite(loss: torch.Tensor) -> torch.Tensor:
    """`loss`, or NaN on every rank when any rank's loss is NaN/inf: a divergence check that all
    ranks pass or fail together, instead of one rank raising while the others wait in a collective."""
    if not distributed.is_distributed():
        return loss
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0])
    torch.distributed.all_reduce(bad)
    return loss if bad.item() == 0 else torch.full_like(loss.detach(), float("nan"))


def _can_sync_batchnorm(model: nn.Module, device: torch.device) -> bool:
    if not has_batchnorm(model):
        return False
    if device.type == "cuda":
        return True
    if distributed.is_main():  # once, not once per rank
        warnings.warn(
            "torch's SyncBatchNorm needs CUDA; on CPU each rank normalises with its own slice of "
            "the batch, so BatchNorm statistics differ from a single-process run",
            stacklevel=3,
        )
    return False


Reverts = list[tuple[nn.Module, str, nn.modules.batchnorm._BatchNorm]]


def to_sync_batchnorm(model: nn.Module) -> Reverts:
    """Swap each BatchNorm child for a SyncBatchNorm sharing its parameters; return how to undo it."""
    reverts: Reverts = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                setattr(parent, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
                reverts.append((parent, name, child))
    return reverts


def revert_batchnorm(reverts: Reverts) -> None:
    for parent, name, original in reversed(reverts):
        sync = getattr(parent, name)
        original.load_state_dict(sync.state_dict())
        original.train(sync.training)
        setattr(parent, name, original)


class GradientSync:
    """Data parallelism for loops whose step owns `backward()` and `optimizer.step()` itself.

    An optimiser step pre-hook does what DDP's reducer does after backward: it
    averages the gradients across ranks (one all_reduce of the flattened gradients), weighted by
    this rank's share of the global batch (`local()`), then broadcasts rank 0's buffers (BatchNorm
    running statistics, as DDP does before each forward). Parameters without a gradient on every
    rank keep none (an expert no point was routed to), as in one process. Clipping must see the
    averaged gradient: a step that clips calls `synchronize(optimizer)` first (as
    `core.training_loop.descend` does), which averages at once and lets the hook skip that step.
    """

    def __init__(self, model: nn.Module, optimizers: list[torch.optim.Optimizer], *, sync_batchnorm: bool = True):
        self.model = model
        self.distributed = distributed.is_distributed()
        self.weight = 1.0
        self._reverts: Reverts = []
        self._handles: list[Any] = []
        self._synchronized: set[int] = set()  # optimisers averaged ahead of their next step
        if not self.distributed:
            return
        device = next(model.parameters()).device
        if sync_batchnorm and _can_sync_batchnorm(model, device):
            self._reverts = to_sync_batchnorm(model)
        with torch.no_grad():  # every rank starts from rank 0's weights, as DDP does
            for t in [*model.parameters(), *model.buffers()]:
                torch.distributed.broadcast(t, src=0)
        self._handles = [opt.register_step_pre_hook(self._average) for opt in optimizers]
        distributed.per_rank_rng()

    def local(self, global_index: torch.Tensor) -> LocalBatch:
        part = local_batch(global_index)
        self.weight = part.weight
        return part

    def synchronize(self, optimizer: torch.optim.Optimizer) -> None:
        """Average this optimiser's gradients now (before clipping); its next step skips the hook."""
        if not self.distributed:
            return
        self._average(optimizer, (), {})
        self._synchronized.add(id(optimizer))

    def _average(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if id(optimizer) in self._synchronized:
            self._synchronized.discard(id(optimizer))
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if not params:
            return
        device = params[0].device
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
        torch.distributed.all_reduce(has)
        live = [p for p, h in zip(params, has.tolist()) if h > 0]
        if not live:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in live])
        flat.mul_(self.weight / distributed.world_size())
        torch.distributed.all_reduce(flat)
        at = 0
        for p in live:
            p.grad = flat[at : at + p.numel()].view_as(p).clone()
            at += p.numel()
        with torch.no_grad():
            for b in self.model.buffers():
                torch.distributed.broadcast(b, src=0)

    def finish(self) -> nn.Module:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        revert_batchnorm(self._reverts)
        self._reverts.clear()
        return self.model
