"""Starting K ranks on the CPU (gloo) for the distributed tests, and a tiny checkpointed training loop."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Callable

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from robustcli.core import distributed
from robustcli.core.checkpoint import Checkpointer
from robustcli.core.ddp import GradientSync, reduce_sums
from robustcli.core.training_loop import StepContext, descend, train_loop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(rank: int, world: int, port: int) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def _rank_main(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple, out: str) -> None:
    os.environ.update(torchrun_env(rank, world, port))
    torch.set_num_threads(1)
    with distributed.session():
        result = fn(*args)
    torch.save(result, Path(out) / f"rank{rank}.pt")


def run_ranks(fn: Callable[..., Any], args: tuple, world: int, out: Path) -> list[Any]:
    """Run `fn(*args)` on `world` spawned processes joined as torchrun would; return each rank's result."""
    mp.start_processes(_rank_main, args=(world, free_port(), fn, args, str(out)), nprocs=world, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


# Scenarios that test modules register to run on 2 ranks. All of them run in ONE launch per test
# session (process start-up dominates the cost): the first test that needs a result starts it.
_SCENARIOS: dict[str, tuple[str, str, Callable[[Path], None] | None]] = {}
_RESULTS: dict[str, tuple[Path, list[dict[str, Any]]]] = {}


def two_rank_scenario(name: str, prepare: Callable[[Path], None] | None = None) -> Callable:
    """Register `fn(tmp) -> result` to run on every rank; `prepare(tmp)` runs before, in one process."""

    def register(fn: Callable[[Path], Any]) -> Callable[[Path], Any]:
        _SCENARIOS[name] = (fn.__module__, fn.__name__, prepare)
        return fn

    return register


def _run_scenarios(specs: list[tuple[str, str, str]], tmp: str) -> dict[str, Any]:
    import importlib

    return {name: getattr(importlib.import_module(module), fn)(Path(tmp)) for name, module, fn in specs}


def two_rank_results(tmp_path_factory) -> tuple[Path, list[dict[str, Any]]]:
    """(shared folder, [rank 0's results, rank 1's]) of every registered scenario."""
    if "runs" not in _RESULTS:
        tmp = tmp_path_factory.mktemp("two-ranks")
        for _, _, prepare in _SCENARIOS.values():
            if prepare is not None:
                prepare(tmp)
        specs = [(name, module, fn) for name, (module, fn, _) in _SCENARIOS.items()]
        _RESULTS["runs"] = (tmp, run_ranks(_run_scenarios, (specs, str(tmp)), world=2, out=tmp))
    return _RESULTS["runs"]


def tiny_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    out: Path,
    resume: bool,
    batch_size: int = 50,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The project's training loop (`core.training_loop`) with a plain SGD step: seeded global
    order, data-parallel step, per-epoch checkpoint."""
    order_gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(xb: torch.Tensor, yb: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        loss = F.cross_entropy(model(xb), yb)
        descend(loss, opt, ctx)
        return {"loss": loss.detach()}

    train_loop(
        model, x, y, step, optimizers={"sgd": opt}, generators={"order": order_gen}, epochs=epochs,
        batch_size=batch_size, run_config={}, checkpointer=Checkpointer(out), resume=resume,
        epoch_end=lambda record: {**record, "seen": record["points"]},
    )  # fmt: skip
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit_owned_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int = 50) -> dict:
    """The shape of a `core.training_loop` step by hand: the step runs backward and the optimiser itself."""
    order_gen = torch.Generator().manual_seed(5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sync = GradientSync(model, [opt])

    def step(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    total = {"loss": 0.0}
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=order_gen)
        for i in range(0, len(y), batch_size):
            part = sync.local(order[i : i + batch_size])
            total["loss"] += step(x[part.index], y[part.index]).item() * part.points
    sync.finish()
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, **reduce_sums(total)}
