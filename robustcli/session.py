"""Loading a model and its data together, with the checks that catch a mismatch early."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from robustcli.data import DataFormat, Dataset, load_dataset
from robustcli.core.device import resolve_device
from robustcli.core.errors import InputError, first_line
from robustcli.core.nn import LogProbabilities, model_float_dtype
from robustcli.models import LoadedModel, load_model
from robustcli.options import data_format


@dataclass
class Workload:
    model: LoadedModel
    data: Dataset
    device: torch.device
    num_classes: int


def check_model_on_data(model: torch.nn.Module, data: Dataset, device: torch.device) -> int:
    """Run the model on two points; return its number of classes or raise a one-line InputError."""
    probe = data.x[:2].to(device)
    try:
        with torch.no_grad():
            out = model.eval()(probe)
    except BaseException as e:  # noqa: BLE001 - any failure (sys.exit in a forward too) means the model is unusable
        if isinstance(e, KeyboardInterrupt):
            raise
        if not isinstance(e, Exception):  # sys.exit and the like: the model's code, not a shape problem
            raise InputError(f"the model's forward raised {type(e).__name__}({first_line(e)}) on two data points") from None
        first = first_line(e)
        dtype = model_float_dtype(model)
        if dtype != probe.dtype and probe.is_floating_point():
            # the usual cause is a float64 model (`model.double()` saved) in a command that runs float32
            raise InputError(
                f"the model computes in {str(dtype).removeprefix('torch.')} and fails on this command's "
                f"{str(probe.dtype).removeprefix('torch.')} data; save it in "
                f"{str(probe.dtype).removeprefix('torch.')} to use it here"
            ) from None
        raise InputError(
            f"the model does not accept the data's input shape {tuple(data.input_shape)} "
            f"(batch shape {tuple(probe.shape)}): {first}"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(probe):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"the model returns {shape}; it must return logits of shape (N, classes)")
    if not out.is_floating_point():
        raise InputError(f"the model returns {out.dtype} values; it must return float logits")
    classes = int(out.shape[1])
    if classes < 1:
        raise InputError("the model returns logits for 0 classes; it must return at least one")
    if int(data.y.max()) >= classes:
        raise InputError(
            f"labels go up to {int(data.y.max())} but the model has {classes} classes; "
            "check that the data matches the model"
        )
    return classes


def open_workload(
    model: str,
    data: str | None,
    *,
    arch: str | None = None,
    mean: tuple[float, ...] = (),
    std: tuple[float, ...] = (),
    allow_pickle: bool = False,
    device: str = "auto",
    n: int | None = None,
    split: str = "test",
    fmt: DataFormat | None = None,
) -> Workload:
    """Model and data of a command, checked together. `fmt` defaults to the command's
    `--classes` / `--pixel-scale` options.

    The model runs in its own precision: an ONNX file keeps a float64 file's weights (`load_model`'s
    onnx_precision="file"), and the data (float32, as every loader returns it) follows a float64
    model: it is cast to float64 here, once, for every step after (the checks below, clean accuracy,
    PGD, the bounds, the reports), so a broken or certified point is one of the model as given, not
    of a rounded copy. The cast is exact, so the points are the same ones; only the arithmetic is the
    model's."""
    dev = resolve_device(device)
    loaded = load_model(
        model, arch=arch, mean=list(mean) or None, std=list(std) or None, allow_pickle=allow_pickle, device=dev,
        onnx_precision="file",
    )
    if data is None:
        data = loaded.dataset or loaded.meta.get("trained_on", "").split(":")[0] or None
        if data is None:
            raise InputError(f"{model} is not a built-in model, so pass --data (mnist, digits or a file)")
    dataset = load_dataset(data, split, fmt if fmt is not None else data_format()).head(n)
    if len(dataset) == 0:
        raise InputError(f"data {data!r} is empty; it needs at least one image")
    if model_float_dtype(loaded.module) == torch.float64 and dataset.x.dtype != torch.float64:
        dataset = Dataset(dataset.x.double(), dataset.y, dataset.name, dataset.provenance)
    fit_declared_input(loaded, dataset)
    classes = check_model_on_data(loaded.module, dataset, dev)
    if check_finite_logits(loaded.module, dataset, dev):
        import sys

        loaded.module = LogProbabilities(loaded.module).eval()
        loaded.meta["outputs"] = "probabilities, attacked as log-probabilities"
        print("note: the model outputs probabilities (non-negative rows summing to 1); attacks and reports use "
              "their logarithm as logits (the same classifier; differences of probabilities saturate and "
              "weaken attacks)", file=sys.stderr)
    return Workload(loaded, dataset, dev, classes)


def in_model_precision(w: Workload, data: Dataset) -> Dataset:
    """`data` (another split or file a command reads beside the workload's) with its points cast to
    the workload's precision, as `open_workload` cast the workload's own (exact: the same points)."""
    if data.x.dtype == w.data.x.dtype:
        return data
    return Dataset(data.x.to(w.data.x.dtype), data.y, data.name, data.provenance)


def are_probabilities(out: torch.Tensor) -> bool:
    """Whether outputs (N, classes) are probabilities: at least two classes, every output >= 0 and
    every row summing to 1 (to float32 rounding)."""
    out = out.double()
    return out.shape[1] >= 2 and bool((out >= 0).all()) and bool(((out.sum(1) - 1).abs() <= 1e-4).all())


def fit_declared_input(loaded: LoadedModel, data: Dataset) -> None:
    """Hold the data to the input shape an ONNX file declares.

    A converted graph can accept other shapes (a Gemm broadcasts over extra axes, a Reshape folds
    them), giving numbers for inputs the network was never meant to see. The one tolerated
    difference is a flat declared input with as many values per point as the data: the data is
    flattened in C order, as the exporter flattened it.
    """
    if loaded.meta.get("format") != "onnx":
        return
    declared = tuple(json.loads(loaded.meta["input_shape"]))
    have = tuple(data.input_shape)
    if have == declared:
        return
    if len(declared) == 1 and math.prod(have) == declared[0]:
        module = loaded.module
        loaded.module = (
            torch.nn.Sequential(torch.nn.Flatten(), *module) if isinstance(module, torch.nn.Sequential)
            else torch.nn.Sequential(torch.nn.Flatten(), module)
        ).eval()
        return
    raise InputError(
        f"the ONNX model declares input shape {declared} per point but the data has {have}; "
        "use data of the declared shape"
    )


def check_finite_logits(model: torch.nn.Module, data: Dataset, device: torch.device, batch_size: int = 256) -> bool:
    """Refuse a model whose logits on the clean data hold NaN or inf, before any attack runs; return
    whether its outputs on all of the data are probabilities (`are_probabilities`).

    A NaN logit makes argmax (and so every accuracy, robust or not) an arbitrary number, not a
    measurement; this is the one place every command's model passes through.
    """
    probabilities = True
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            try:
                out = model(data.x[start : start + batch_size].to(device))
            except BaseException as e:  # noqa: BLE001 - as in check_model_on_data
                if isinstance(e, KeyboardInterrupt):
                    raise
                raise InputError(f"the model fails on clean data point {start} or after: {type(e).__name__}: {first_line(e)}") from None
            if not isinstance(out, torch.Tensor) or out.dim() != 2:
                raise InputError("the model returns something other than (N, classes) logits on the clean data")
            bad = (~torch.isfinite(out)).any(1).nonzero()
            if len(bad):
                raise InputError(
                    f"the model's logits are NaN or inf on clean data point {start + int(bad[0])}; "
                    "a prediction from such logits is arbitrary, so no accuracy can be measured. "
                    "Check its weights and --mean/--std"
                )
            probabilities = probabilities and are_probabilities(out)
    return probabilities
