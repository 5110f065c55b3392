"""Rich progress bars on stderr, so tables and JSON on stdout stay clean."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from rich.console import Console

from robustcli.core import distributed
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

stderr = Console(stderr=True)


@contextmanager
def progress_bar(
    description: str, total: int, enabled: bool = True, show: bool | None = None
) -> Iterator[Callable[..., None]]:
    """Yields `advance(n=1, **fields)`; `fields` are shown after the bar (loss, accuracy, ...).

    Under torchrun one rank shows its bar: rank 0 unless `show` says which (see `shows_shard`);
    ranks do not report progress to each other, so the bar counts that rank's share of the work
    and its description says which rank it is.
    """
    if show is None:
        show = distributed.is_main()
    if not enabled or not show:
        yield lambda n=1, **fields: None
        return
    if distributed.world_size() > 1:
        description = f"{description} (rank {distributed.rank()} of {distributed.world_size()})"
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=stderr,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields: object) -> None:
            info = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            bar.update(task, advance=n, **({"info": info} if fields else {}))

        yield advance


def shows_shard(part: slice, n: int) -> bool:
    """Whether this rank shows the bar of `n` points split by `distributed.shard`: the first rank
    that holds points (its shard starts at 0), or rank 0 when there are none. A small run can
    leave rank 0 without a batch, and its bar would read 0/0."""
    start, stop = part.indices(n)[:2]
    if n == 0:
        return distributed.is_main()
    return start == 0 and stop > 0


def evaluate_units(plan: Sequence[tuple[Any, Sequence[float]]], points: int) -> int:
    """The total of `attacks.evaluate.evaluate`'s progress calls for `plan` over `points` points.

    `evaluate` reports (point, budget) pairs: each budget of a fixed-budget attack is a run of its
    own, while a minimisation attack (CW) finds each point's smallest perturbation once for all.
    """
    return sum(points * (1 if getattr(a, "minimization", False) else len(eps)) for a, eps in plan)
