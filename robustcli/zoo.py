"""Built-in models: trained on bundled data with a fixed seed on first use, then cached."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from robustcli.archs import ARCHS, Normalized, build_arch
from robustcli.data import load_dataset
from robustcli.progress import progress_bar
from robustcli.training import train_natural

ZOO_SEED = 0
ZOO_VERSION = "v1"  # bump when a built-in recipe changes, so stale caches are not reused
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


def builtin_model(name: str, progress: bool = True) -> nn.Module:
    from robustcli.models import read_safetensors_model, save_model

    path = builtin_path(name)
    if path.exists():
        return read_safetensors_model(path, None)[0].eval()
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
