"""Built-in architectures, by name. Each is a plain `nn.Sequential` so bound engines can walk it."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

from torch import nn

from robustcli.core.errors import InputError, first_line


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


# Mixture-of-experts CNNs (robustcli.defenses.moe) are built-in too, named by data set, experts
# and top-k. Trainers save them under the `robustcli.defenses.moe:` name; both spellings resolve
# here without importing a module named by a string, so a model file can choose them safely.
MOE_ARCH = re.compile(r"(?:robustcli\.defenses\.moe:)?(mnist|digits)_moe_cnn_e(\d{1,3})_k(\d{1,3})")


def is_builtin_arch(name: str) -> bool:
    """True for names that resolve without running code named by the caller."""
    return name in ARCHS or MOE_ARCH.fullmatch(name) is not None


def _builtin_moe(name: str) -> nn.Module | None:
    m = MOE_ARCH.fullmatch(name)
    if m is None:
        return None
    from robustcli.defenses.moe import digits_moe_cnn, mnist_moe_cnn

    build = mnist_moe_cnn if m.group(1) == "mnist" else digits_moe_cnn
    try:
        return build(int(m.group(2)), int(m.group(3)))
    except ValueError as e:
        raise InputError(f"architecture {name!r}: {e}") from None


def build_arch(name: str, *, allow_factory: bool = True) -> nn.Module:
    """A built-in architecture by name, or a user's factory: `path/to/file.py:function` or `package.module:function`.

    `allow_factory=False` is for names read from a model file: such a name may only pick a
    built-in architecture, because importing a module and calling a function chosen by a
    downloaded file is running that file's code. A factory runs only when the user names it.
    """
    if name in ARCHS:
        return ARCHS[name].factory()
    moe = _builtin_moe(name)
    if moe is not None:
        return moe
    if ":" in name and not allow_factory:
        raise InputError(
            f"the model file names architecture {name!r}, which is not built-in; loading it would run code "
            f"the file chose. If you trust that code, pass --arch {name} yourself"
        )
    if ":" in name:
        return _call_factory(name)
    raise InputError(
        f"unknown architecture {name!r}; use a built-in one ({', '.join(ARCHS)}), path/to/file.py:factory "
        "or package.module:factory"
    )


def _import_file(path: str, name: str) -> ModuleType:
    """Run the Python file `path` as a module of its own (its folder is not put on sys.path)."""
    file = Path(path).expanduser()
    if file.suffix != ".py" or not file.is_file():
        raise InputError(f"--arch {name!r}: no Python file {file}; name a .py file that defines the factory")
    spec = importlib.util.spec_from_file_location(f"robustcli_user_arch_{file.stem}", file)
    if spec is None or spec.loader is None:
        raise InputError(f"--arch {name!r}: cannot load {file} as Python")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _call_factory(name: str) -> nn.Module:
    """Call the zero-argument `factory` of `path/to/file.py:factory` (a file the user names) or of
    `package.module:factory` (imported from PYTHONPATH); any failure is one line."""
    module_name, _, attr = name.rpartition(":")  # rpartition: a Windows path has a colon of its own
    if not module_name or not attr:
        raise InputError(f"--arch {name!r}: write a factory as path/to/file.py:function or package.module:function")
    try:
        if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
            module = _import_file(module_name, name)
            if not hasattr(module, attr):
                raise InputError(f"--arch {name!r}: {module_name} defines no {attr!r}")
            factory = getattr(module, attr)
        else:
            factory = getattr(importlib.import_module(module_name), attr)
    except InputError:
        raise
    except ModuleNotFoundError as e:
        raise InputError(
            f"cannot import architecture factory {name!r}: {first_line(e)}; a module must be on PYTHONPATH, "
            f"or name its file: --arch path/to/{module_name.replace('.', '/')}.py:{attr}"
        ) from None
    except (ImportError, AttributeError) as e:
        raise InputError(f"cannot import architecture factory {name!r}: {first_line(e)}") from None
    except BaseException as e:  # noqa: BLE001 - the module's own code failed while importing
        raise InputError(f"importing architecture factory {name!r} failed: {type(e).__name__}: {first_line(e)}") from None
    if not callable(factory):
        raise InputError(f"{name} is a {type(factory).__name__}, not a function returning a torch.nn.Module")
    try:
        model = factory()
    except BaseException as e:  # noqa: BLE001 - SystemExit from user code too: never a silent exit 0
        raise InputError(f"architecture factory {name} raised {type(e).__name__}: {first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"{name} returned {type(model).__name__}, not a torch.nn.Module")
    return model
