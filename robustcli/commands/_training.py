"""Shared plumbing of the training commands: their common options, data, model and progress bar
(option values are checked by their requests, `robustcli.training_requests`)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import click
import torch
from torch import nn

from robustcli.archs import ARCHS, build_arch
from robustcli.core.nn import Normalized
from robustcli.certify.init import ibp_init
from robustcli.data import BUILTIN_DATASETS, Dataset, dataset_family, load_dataset
from robustcli.core.errors import InputError
from robustcli.models import wrap_normalization
from robustcli.options import data_format, data_format_options, data_option, device_option, seed_option, train_points_option
from robustcli.progress import progress_bar
from robustcli.session import check_model_on_data
from robustcli.training_requests import TrainRequest
from robustcli.zoo import NORMALIZATION

DEFAULT_ARCH = {"mnist": "mnist-cnn", "digits": "digits-cnn"}

training_options = [
    data_option(required=True, help="Training data: mnist, digits, or a .npz/.pt/.safetensors file."),
    click.option("--test-data", default=None, help="Test data for the final table (default: the bundled test split)."),
    data_format_options,
    train_points_option("train_n"),
    click.option("--epochs", type=int, default=TrainRequest.epochs, show_default=True),
    click.option("--lr", type=float, default=TrainRequest.lr, show_default=True, help="Adam learning rate."),
    click.option("--batch-size", type=int, default=TrainRequest.batch_size, show_default=True),
    click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output model (.safetensors)."),
    click.option("--resume", is_flag=True, help="Continue from the checkpoint beside --out (OUT.ckpt.pt)."),
    device_option,
    seed_option,
]


def apply_options(options: list[Callable]) -> Callable[[Callable], Callable]:
    def wrap(f: Callable) -> Callable:
        for option in reversed(options):
            f = option(f)
        return f

    return wrap


def train_test_data(data: str, test_data: str | None, train_n: int | None = None) -> tuple[Dataset, Dataset]:
    fmt = data_format()
    if data in BUILTIN_DATASETS:
        train = load_dataset(data, "train")
        test = load_dataset(test_data or data, "test", fmt)
    elif test_data is None:
        raise InputError(f"--data {data} is a file; pass --test-data too (a held-out file for the final table)")
    else:
        train, test = load_dataset(data, "test", fmt), load_dataset(test_data, "test", fmt)
    if train.input_shape != test.input_shape:
        raise InputError(
            f"--test-data images have shape {test.input_shape} but the training images {train.input_shape}; "
            "use test data of the same kind"
        )
    if len(test) and int(test.y.max()) >= train.num_classes:
        raise InputError(
            f"--test-data labels go up to {int(test.y.max())} but the training data has {train.num_classes} classes "
            f"(0..{train.num_classes - 1}); check that the test data matches the training data"
        )
    return train.head(train_n), test


def build_model(
    arch: str,
    data: str,
    seed: int,
    *,
    init: str = "default",
    mean: tuple[float, ...] = (),
    std: tuple[float, ...] = (),
) -> nn.Module:
    """The architecture, initialised from `seed`, with its normalisation (given, or the bundled data's).

    torch's default init draws from the global generator, which is seeded here (callers that
    must not touch it wrap the call in `torch.random.fork_rng`); `init="ibp"` then redraws the
    weights with IBP init (Shi et al. 2021) from its own generator.
    """
    torch.manual_seed(seed)
    inner = build_arch(arch)
    if init == "ibp":
        ibp_init(inner, torch.Generator().manual_seed(seed))
    if mean or std:
        return wrap_normalization(inner, list(mean) or None, list(std) or None)
    if dataset_family(data) in NORMALIZATION:
        return Normalized(inner, *NORMALIZATION[dataset_family(data)])
    return inner


def new_model(arch: str | None, data: str, train: Dataset, device: torch.device, seed: int) -> tuple[nn.Module, str]:
    """A freshly initialised built-in (or user factory) architecture, normalised for bundled data."""
    if arch is None:
        if dataset_family(data) not in DEFAULT_ARCH:
            raise InputError(f"--data {data} is not bundled data, so pass --arch (built-in: {', '.join(ARCHS)})")
        arch = DEFAULT_ARCH[dataset_family(data)]
    model = build_model(arch, data, seed).to(device)
    check_model_on_data(model, train, device)
    return model.train(), arch


@contextmanager
def epoch_progress(description: str, epochs: int, n: int, batch_size: int) -> Iterator[Callable]:
    """A bar over all training batches; yields on_batch(n, losses)."""
    batches = -(-n // batch_size)
    with progress_bar(description, epochs * batches) as advance:
        yield lambda k, losses: advance(1, **{name: v for name, v in losses.items() if name != "eps"})
