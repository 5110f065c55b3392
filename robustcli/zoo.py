"""Built-in models: trained with a fixed seed on first use, then cached with their provenance.

Each cached model records how to reproduce and check it: the dataset split it was trained on and
the sha256 of those training tensors, the recipe (epochs, number of training points), the seed,
the torch version, its test accuracy, and the sha256 of its weights (`weights_sha256`, over the
saved tensors in name order), which `robust models` re-computes from the file.

MNIST models train on the official 60,000-image training set. To keep the first use within a
couple of minutes on two CPU cores, the recipe is short: one or two epochs of Adam (enough for
97-98% test accuracy on the small nets), and CNN-7 sees a fixed random quarter of the set
(`Recipe.train_points`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robustcli.archs import ARCHS, build_arch
from robustcli.core.nn import Normalized
from robustcli.cache import cache_dir
from robustcli.core.errors import InputError
from robustcli.data import Dataset, load_dataset
from robustcli.progress import progress_bar
from robustcli.training import accuracy, train_natural

ZOO_SEED = 0
ZOO_VERSION = "v2"  # bump when a built-in recipe changes, so stale caches are not reused
LOCK_TIMEOUT_S = 3600  # training a built-in takes minutes; a stuck lock should not wait forever
# Per-dataset pixel statistics, applied inside the model (attacks stay in [0, 1] pixel space).
NORMALIZATION = {"mnist": ([0.1307], [0.3081]), "digits": ([0.3], [0.4])}  # by `dataset_family`


@dataclass(frozen=True)
class Recipe:
    epochs: int
    train_points: int | None = None  # None: the whole training split; else a fixed random subset

    def describe(self) -> str:
        epochs = f"{self.epochs} epoch{'s' if self.epochs > 1 else ''}"
        return f"{epochs}, {self.train_points // 1000}k points" if self.train_points else epochs


RECIPES: dict[str, Recipe] = {
    "mnist-mlp": Recipe(epochs=2),
    "mnist-mlp-bn": Recipe(epochs=2),
    "mnist-cnn": Recipe(epochs=1),
    "mnist-cnn-bn": Recipe(epochs=1),
    "mnist-cnn7-bn": Recipe(epochs=1, train_points=15_000),
    "digits-mlp": Recipe(epochs=40),
    "digits-mlp-bn": Recipe(epochs=40),
    "digits-cnn": Recipe(epochs=40),
}


def builtin_path(name: str) -> Path:
    return cache_dir() / f"{name}-{ZOO_VERSION}.safetensors"


def dataset_sha256(data: Dataset) -> str:
    """sha256 of a dataset's tensors as robustcli uses them (float32 images, then int64 labels)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(data.x.detach().cpu().numpy(), dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(data.y.detach().cpu().numpy(), dtype=np.int64).tobytes())
    return h.hexdigest()


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of each tensor, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _usable_cache_dir() -> Path:
    """The cache folder, created if needed; one-line InputError when it cannot be."""
    folder = cache_dir()
    hint = "set ROBUSTCLI_CACHE to a writable folder"
    if folder.exists() and not folder.is_dir():
        raise InputError(f"the model cache {folder} is a file, not a folder; {hint}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the model cache {folder} ({e.strerror}); {hint}") from None
    return folder


def builtin_model(name: str, progress: bool = True) -> nn.Module:
    """The cached built-in model, trained first if absent.

    Concurrent first uses (several shells, torchrun ranks on one machine) take a file lock
    beside the cache entry: one process trains and writes, the others wait and then load it.
    """
    from filelock import FileLock, Timeout

    from robustcli.models import read_safetensors_model

    path = builtin_path(name)
    if path.exists():
        return read_safetensors_model(path, None)[0].eval()
    _usable_cache_dir()
    try:
        with FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S):
            if path.exists():  # another process trained it while this one waited
                return read_safetensors_model(path, None)[0].eval()
            return _train_builtin(name, path, progress)
    except Timeout:
        raise InputError(
            f"waited {LOCK_TIMEOUT_S} s for another process training {name} (lock {path}.lock); "
            "if none is running, delete the lock file"
        ) from None
    except OSError as e:
        raise InputError(f"cannot use the model cache {path.parent} ({e.strerror}); set ROBUSTCLI_CACHE to a writable folder") from None


def _train_builtin(name: str, path: Path, progress: bool) -> nn.Module:
    from robustcli.models import save_model

    spec, recipe = ARCHS[name], RECIPES[name]
    torch.manual_seed(ZOO_SEED)
    mean, std = NORMALIZATION[spec.dataset]
    model = Normalized(build_arch(name), mean, std)
    full = load_dataset(spec.dataset, "train")
    data = _subset(full, recipe.train_points)
    # Counted in training points, so a one-epoch recipe still shows progress and a time estimate.
    label = f"first use: training {name} on {data.name}"
    with progress_bar(label, recipe.epochs * len(data), enabled=progress) as advance:
        train_natural(model, data, epochs=recipe.epochs, seed=ZOO_SEED,
                      on_batch=lambda points, losses: advance(points, loss=losses.get("loss", float("nan"))))  # fmt: skip
    test = load_dataset(spec.dataset, "test")
    meta = {
        "trained_on": full.name,
        "data_sha256": dataset_sha256(full),
        "train_points": len(data),
        "epochs": recipe.epochs,
        "seed": ZOO_SEED,
        "torch": torch.__version__,
        "test_accuracy": f"{accuracy(model, test.x, test.y):.4f}",
        "test_points": len(test),
        "weights_sha256": weights_sha256(model.model.state_dict()),
    }
    save_model(model, path, name, extra=meta)
    return model.eval()


def _subset(data: Dataset, points: int | None) -> Dataset:
    """A fixed random subset (seeded by ZOO_SEED), or the whole split."""
    if points is None or points >= len(data):
        return data
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(ZOO_SEED))[:points]
    return Dataset(data.x[idx], data.y[idx], f"{data.name}[{points}]")
