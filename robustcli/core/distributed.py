"""Running on several processes with PyTorch's own distributed engine (torch.distributed, torchrun).

`torchrun --nproc-per-node K -m robustcli COMMAND ...` starts K processes and sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `session()` (entered by `robustcli.cli.main`)
then joins the process group: gloo for CPU tensors and NCCL for CUDA tensors (one combined
group, `"cpu:gloo,cuda:nccl"`, so evaluation results gathered as CPU objects never round-trip
through a GPU) with each process on GPU LOCAL_RANK. Without torchrun (no WORLD_SIZE, or 1)
nothing is initialised and every helper here is a no-op: rank 0 of a world of one.

Evaluation commands shard points by whole batches (`shard`), so each batch, and the seed of its
random starts (drawn from the seed and the batch's first global index), is the one a single
process would see; `gather_to_main` brings the per-point results to rank 0, which alone prints
and writes reports. Training uses `core.training_loop` with `core.ddp`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """True when this process was started by torchrun (or an equivalent launcher) with >1 process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def backend() -> str:
    """gloo for CPU tensors; NCCL added for CUDA tensors where this build has it."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init_from_env() -> bool:
    """Join the process group torchrun describes in the environment; idempotent.

    Returns True when this process is now one of several. Missing launcher variables are an
    error a user can fix, so they are reported in one line rather than as a hang.
    """
    if not launched() or is_distributed():
        return is_distributed()
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; run without torchrun")
    missing = [v for v in TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} unset; start with torchrun"
        )
    if torch.cuda.is_available():
        # One GPU per process: a bare `cuda` device (what `--device auto` resolves to) is this one.
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    dist.init_process_group(backend=backend(), init_method="env://")
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def session() -> Iterator[None]:
    """Join the process group if launched by torchrun; leave it cleanly on any exit.

    On ranks other than 0, stdout is silenced: tables and reports come from rank 0 only, while
    stderr stays open so a crash on any rank is still seen.
    """
    joined = init_from_env()
    saved = sys.stdout
    quiet = open(os.devnull, "w") if joined and not is_main() else None  # noqa: SIM115 - closed below
    if quiet is not None:
        sys.stdout = quiet
    try:
        yield
    finally:
        if quiet is not None:
            sys.stdout = saved
            quiet.close()
        shutdown()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. trains a built-in model into the cache), then the rest."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def shard(n: int, batch_size: int, *, rank_: int | None = None, world: int | None = None) -> slice:
    """This rank's contiguous share of `n` points, cut at batch boundaries.

    The ceil(n / batch_size) batches are split as evenly as possible across ranks in order, so
    rank r's points start at a multiple of `batch_size` (its batches are exactly the
    single-process batches) and concatenating the shards in rank order restores the full order.
    """
    r = rank() if rank_ is None else rank_
    k = world_size() if world is None else world
    batches = -(-n // batch_size) if n else 0
    first = r * batches // k
    last = (r + 1) * batches // k
    return slice(min(first * batch_size, n), min(last * batch_size, n))


def gather_to_main(local: T, merge: Callable[[Sequence[T]], T]) -> T | None:
    """Collect every rank's `local` on rank 0 and return `merge([rank 0's, rank 1's, ...])` there.

    Other ranks return None. Single process: `local` itself. Objects travel pickled through the
    gloo group (torch.distributed.gather_object); tensors in them (inside dataclasses, dicts,
    lists, tuples) are moved to the CPU first, so rank 0 never unpickles another rank's GPU tensor.
    """
    if not is_distributed():
        return local
    parts: list[T] | None = [None] * world_size() if is_main() else None  # type: ignore[list-item]
    dist.gather_object(to_cpu(local), parts, dst=0)
    return merge(parts) if is_main() else None  # type: ignore[arg-type]


def to_cpu(obj: T) -> T:
    """`obj` with every tensor in it (dataclass fields, dict values, list/tuple items) on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()  # type: ignore[return-value]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: to_cpu(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, dict):
        return type(obj)((k, to_cpu(v)) for k, v in obj.items())  # type: ignore[return-value]
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)  # type: ignore[return-value]
    return obj


def broadcast_from_main(obj: T) -> T:
    """Rank 0's `obj` on every rank (e.g. a value only rank 0 computed)."""
    if not is_distributed():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def per_rank_rng() -> None:
    """Give each rank its own stream of torch's global generator, derived from one shared draw.

    Every rank draws the same number from its (identical: seeded or restored alike) current
    state, then seeds with it plus its rank: deterministic for a given world size, and different
    noise on different ranks (random starts, dropout). A no-op in a single process.
    """
    if not is_distributed():
        return
    shared = int(torch.randint(0, 2**62, (1,)).item())
    torch.manual_seed(shared + rank())


def per_rank_generators(generators: dict[str, torch.Generator]) -> None:
    """Like `per_rank_rng` for a run's own generators (e.g. a training attack's random starts):
    each draws one number from its shared state and is re-seeded with it plus the rank."""
    if not is_distributed():
        return
    for g in generators.values():
        shared = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device).item())
        g.manual_seed(shared + rank())
