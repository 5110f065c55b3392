"""Built-in architectures, by name. Each is a plain `nn.Sequential` so bound engines can walk it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from robustcli.core.errors import InputError
from robustcli.core.nn import Normalized


@dataclass(frozen=True)
class ArchSpec:
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int
    dataset: str  # the bundled dataset a built-in model of this arch is trained on
    description: str


def _mlp(sizes: list[int], bn: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            if bn:
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _cnn(in_ch: int, side: int, chans: list[int], fc: int, classes: int, bn: bool = False) -> nn.Sequential:
    """Stride-2 4x4 convolutions (the 'small' CNN of Wong & Kolter 2018), then one hidden FC layer."""
    layers: list[nn.Module] = []
    c = in_ch
    for out in chans:
        layers.append(nn.Conv2d(c, out, 4, stride=2, padding=1))
        if bn:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU())
        c, side = out, side // 2
    layers += [nn.Flatten(), nn.Linear(c * side * side, fc)]
    if bn:
        layers.append(nn.BatchNorm1d(fc))
    layers += [nn.ReLU(), nn.Linear(fc, classes)]
    return nn.Sequential(*layers)


def _cnn7(in_ch: int, side: int, width: int, fc: int, classes: int) -> nn.Sequential:
    """CNN-7 of Shi et al. 2021 (5 conv + 2 FC, BN after each but the last), width scaled for CPU."""
    plan = [(width, 1), (width, 1), (2 * width, 2), (2 * width, 1), (2 * width, 1)]
    layers: list[nn.Module] = []
    c = in_ch
    for out, stride in plan:
        layers += [nn.Conv2d(c, out, 3, stride=stride, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        c, side = out, (side + stride - 1) // stride
    layers += [nn.Flatten(), nn.Linear(c * side * side, fc), nn.BatchNorm1d(fc), nn.ReLU(), nn.Linear(fc, classes)]
    return nn.Sequential(*layers)


ARCHS: dict[str, ArchSpec] = {
    "mnist-mlp": ArchSpec(lambda: _mlp([784, 256, 128, 10]), (1, 28, 28), 10, "mnist", "MLP 784-256-128-10"),
    "mnist-mlp-bn": ArchSpec(
        lambda: _mlp([784, 256, 128, 10], bn=True), (1, 28, 28), 10, "mnist", "MLP 784-256-128-10 with BN"
    ),
    "mnist-cnn": ArchSpec(
        lambda: _cnn(1, 28, [16, 32], 100, 10), (1, 28, 28), 10, "mnist", "CNN conv16-conv32-fc100"
    ),
    "mnist-cnn-bn": ArchSpec(
        lambda: _cnn(1, 28, [16, 32], 100, 10, bn=True), (1, 28, 28), 10, "mnist", "CNN conv16-conv32-fc100 with BN"
    ),
    "mnist-cnn7-bn": ArchSpec(
        lambda: _cnn7(1, 28, 16, 128, 10), (1, 28, 28), 10, "mnist", "CNN-7 (width 16/32, fc128) with BN"
    ),
    "digits-mlp": ArchSpec(lambda: _mlp([64, 64, 10]), (1, 8, 8), 10, "digits", "MLP 64-64-10"),
    "digits-mlp-bn": ArchSpec(lambda: _mlp([64, 64, 10], bn=True), (1, 8, 8), 10, "digits", "MLP 64-64-10 with BN"),
    "digits-cnn": ArchSpec(lambda: _cnn(1, 8, [16], 64, 10), (1, 8, 8), 10, "digits", "CNN conv16-fc64"),
}


def build_arch(name: str) -> nn.Module:
    """A built-in architecture by name, or a user's factory given as `package.module:function`."""
    if name in ARCHS:
        return ARCHS[name].factory()
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise InputError(f"cannot import architecture factory {name!r}: {e}") from None
        model = factory()
        if not isinstance(model, nn.Module):
            raise InputError(f"{name} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    raise InputError(
        f"unknown architecture {name!r}; use a built-in one ({', '.join(ARCHS)}) or package.module:factory"
    )
