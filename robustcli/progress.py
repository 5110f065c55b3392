"""Rich progress bars on stderr, so tables and JSON on stdout stay clean."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from rich.console import Console

from robustcli.core import distributed
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

stderr = Console(stderr=True)


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yields `advance(n=1, **fields)`; `fields` are shown after the bar (loss, accuracy, ...).

    Under torchrun only rank 0 shows bars.
    """
    if not enabled or not distributed.is_main():
        yield lambda n=1, **fields: None
        return
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


def evaluate_units(plan: Sequence[tuple[Any, Sequence[float]]], points: int) -> int:
    """The total of `attacks.evaluate.evaluate`'s progress calls for `plan` over `points` points.

    `evaluate` reports (point, budget) pairs: each budget of a fixed-budget attack is a run of its
    own, while a minimisation attack (CW) finds each point's smallest perturbation once for all.
    """
    return sum(points * (1 if getattr(a, "minimization", False) else len(eps)) for a, eps in plan)
