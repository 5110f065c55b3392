"""The trainers' `--html` page: the final evaluation table, the training curve, and the broken points
of the final evaluation's attacks, on the page builder of `robustcli.html_report`.

The images come from the final evaluation itself. `attacks.evaluate` seeds each (attack, batch)
from the run's seed and the batch's first index alone (`batch_generator`), so running the same
attacks with the same seed and batch size on the first batch of the test points reproduces that
batch's adversarial examples exactly; only that batch is attacked again, whatever the test size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from robustcli.attacks.base import Attack
from robustcli.attacks.evaluate import evaluate
from robustcli.html_page import Section, table
from robustcli.html_report import check_output, training_page, write_html
from robustcli.image_grid import BrokenSample, broken_sample, grid_png
from robustcli.report_charts import training_curve_png

HTML_SUFFIXES = (".html", ".htm")
FINAL_CHECK_BATCH = 256  # the batch size of `defenses.evaluation.clean_and_pgd_accuracy` (a test pins it)


def check_html(path: str | None) -> None:
    """Before any training: `--html` names an .html file in an existing folder (one-line error otherwise)."""
    check_output(path, "--html", HTML_SUFFIXES)


def settings(config: dict[str, Any]) -> str:
    """A trainer's config dict as one line for the page's facts (`epochs 10, lr 0.001, ...`)."""
    return ", ".join(f"{k} {v}" for k, v in config.items())


def first_batch_sample(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[tuple[Attack, Sequence[float]]],
    *,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> tuple[BrokenSample | None, str]:
    """Broken points among the final evaluation's first batch, with the adversarial examples that
    evaluation found for them; also says which points were searched (for the page)."""
    n = min(batch_size, len(y))
    head = evaluate(
        model, x[:n], y[:n], attacks, device=device, batch_size=batch_size, seed=seed, keep_adversarials=True
    )
    return broken_sample(head, model, x[:n], y[:n], device=device), f"the first {n} test points"


def write_training_html(
    path: str | Path,
    *,
    title: str,
    meta: list[tuple[str, Any]],
    columns: list[str],
    rows: list[list[Any]],
    caption: str | None,
    histories: dict[str, list[dict]],
    samples: list[tuple[str, BrokenSample | None, str]],
    extra: list[Section] = (),  # type: ignore[assignment]
) -> None:
    """Atomically write the page. `rows` are the terminal table's; `samples` are (heading, sample,
    which points were searched) per attacked model."""
    final = Section("Final evaluation", [table(columns, rows, caption)])
    curve = training_curve_png(histories, title="training")
    grids = [
        (heading, None if sample is None else grid_png(sample, title=heading), searched)
        for heading, sample, searched in samples
    ]
    write_html(path, training_page(title, meta, final, curve, grids, list(extra)))
