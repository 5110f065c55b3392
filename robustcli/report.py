"""Reports: atomic JSON and tensor files, Rich tables."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from robustcli.core import distributed
from robustcli.core.errors import InputError
from robustcli.core.files import atomic_path
from robustcli.core.nn import model_float_dtype

PIPE_WIDTH = 100  # columns of a table written to a pipe or file (a log, a CI job), unless COLUMNS says


def table_width() -> int | None:
    """None (the terminal's own width) on a terminal; else $COLUMNS, or 100 columns."""
    if sys.stdout.isatty():
        return None
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else PIPE_WIDTH


class _Stdout:
    """The console tables print to, sized when printing: a test runner or a pipe may replace
    sys.stdout after import, and a terminal may be resized. A table whose narrowest layout (whole
    headers, unbroken names) is wider than that gets the width it needs, so no cell is cut off."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        console = Console(width=table_width())
        wide = console.options.update_width(10_000)  # measure unconstrained
        need = max((Measurement.get(console, wide, o).minimum for o in objects if isinstance(o, Table)), default=0)
        if need > console.width:
            console = Console(width=need)
        console.print(*objects, **kwargs)


stdout = _Stdout()


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, torch.Tensor):
        return _jsonable(v.tolist())
    if isinstance(v, (np.floating, np.integer)):
        return _jsonable(v.item())
    return v


def write_json(path: str | Path, report: dict) -> None:
    """Atomically; under torchrun rank 0 only."""
    if not distributed.is_main():
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(report), indent=2) + "\n")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors for `.safetensors`, numpy's npz for `.npz`; under torchrun rank 0 only."""
    path = Path(path)
    if path.suffix not in (".safetensors", ".npz"):
        raise InputError(f"cannot save to {path.name}: use a .safetensors or .npz file name")
    if not distributed.is_main():
        return
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        else:
            with open(tmp, "wb") as f:
                np.savez(f, **{k: v.detach().cpu().numpy() for k, v in tensors.items()})


def fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def pct(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:.1f}%"


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None) -> None:
    """A Rich table on stdout. Headers keep their width (a figure's name stays on one line) and
    first-column names are not wrapped; when the table is wider than the console, the other long
    cells wrap."""
    table = Table(title=title, caption=caption)
    for i, c in enumerate(columns):
        if i == 0:  # a name (model, attack, check): whole words, never split
            table.add_column(c, justify="left", no_wrap=True, overflow="fold")
        else:
            table.add_column(c, justify="right", min_width=cell_len(c))
    for row in rows:
        table.add_row(*[x if isinstance(x, str) else fmt(x) for x in row])
    stdout.print(table)


def data_source(name: str) -> str:
    """What a dataset name stands for: which MNIST ran, or the user's file."""
    from robustcli.data import DESCRIPTIONS

    return DESCRIPTIONS.get(name.split(":")[0], f"file {name}")


def dtype_name(dtype: torch.dtype) -> str:
    """"float32" for torch.float32: how reports spell a dtype."""
    return str(dtype).removeprefix("torch.")


def base_report(command: str, workload, seed: int) -> dict:
    """The fields every report starts with; `model_dtype` is the precision the model ran in
    ("float64" for a float64 model opened at its own precision, see `open_workload`)."""
    return {
        "command": command,
        "model": workload.model.name,
        "arch": workload.model.arch,
        "model_dtype": dtype_name(model_float_dtype(workload.model.module)),
        "data": workload.data.name,
        "data_source": data_source(workload.data.name),
        "n": len(workload.data),
        "seed": seed,
        "device": str(workload.device),
        **({"data_format": workload.data.provenance} if workload.data.provenance else {}),
    }
