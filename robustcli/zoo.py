"""Built-in models: trained on bundled data with a fixed seed on first use, then cached."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from robustcli.archs import ARCHS, Normalized, build_arch
from robustcli.core.errors import InputError
from robustcli.data import load_dataset
from robustcli.progress import progress_bar
from robustcli.training import train_natural

ZOO_SEED = 0
ZOO_VERSION = "v1"  # bump when a built-in recipe changes, so stale caches are not reused
LOCK_TIMEOUT_S = 3600  # training a built-in takes minutes; a stuck lock should not wait forever
EPOCHS = {"mnist": 10, "digits": 40}
# Per-dataset pixel statistics, applied inside the model (attacks stay in [0, 1] pixel space).
NORMALIZATION = {"mnist": ([0.1307], [0.3081]), "digits": ([0.3], [0.4])}


def cache_dir() -> Path:
    """`$ROBUSTCLI_CACHE`, else `$XDG_CACHE_HOME/robustcli`, else `~/.cache/robustcli`."""
    if os.environ.get("ROBUSTCLI_CACHE"):
        return Path(os.environ["ROBUSTCLI_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "robustcli"


def builtin_path(name: str) -> Path:
    return cache_dir() / f"{name}-{ZOO_VERSION}.safetensors"


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

    spec = ARCHS[name]
    torch.manual_seed(ZOO_SEED)
    mean, std = NORMALIZATION[spec.dataset]
    model = Normalized(build_arch(name), mean, std)
    data = load_dataset(spec.dataset, "train")
    epochs = EPOCHS[spec.dataset]
    with progress_bar(f"training built-in {name} (first use)", epochs, enabled=progress) as advance:
        train_natural(model, data, epochs=epochs, seed=ZOO_SEED, on_epoch=lambda e, loss: advance(loss=loss))
    save_model(model, path, name, extra={"trained_on": f"{spec.dataset}:train", "seed": ZOO_SEED})
    return model.eval()
