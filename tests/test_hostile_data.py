"""Hostile and malformed data: one line, exit 2, no traceback; and no silently wrong number."""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from hostile_files import Payload, make_fifo, one_error_line, png_bomb


def _folder(root: Path, classes: dict[str, list[int]], size: int = 8) -> Path:
    """Class folders of greyscale PNGs; each image's value is its index in `classes[name]`."""
    root.mkdir()
    for name, values in classes.items():
        (root / name).mkdir()
        for i, v in enumerate(values):
            Image.fromarray(np.full((size, size), v, dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    x = np.random.default_rng(0).random((6, 1, 8, 8)).astype(np.float32)
    y = np.arange(6) % 3
    np.savez(d / "noy.npz", x=x)
    np.savez(d / "nox.npz", y=y)
    np.savez(d / "objects.npz", x=np.array([object()] * 6, dtype=object), y=y)
    (d / "garbage.npz").write_bytes(b"PK\x03\x04garbage")
    (d / "text.npz").write_text("x,y\n1,2\n")
    np.save(d / "pickled.npy", np.array([1]))  # a .npy, not an npz
    (d / "pickled.npz").write_bytes(pickle.dumps({"x": Payload(d / "RAN"), "y": y}))
    np.savez(d / "nan.npz", x=np.where(x > 0.5, np.nan, x), y=y)
    np.savez(d / "inf.npz", x=np.where(x > 0.5, np.inf, x), y=y)
    np.savez(d / "range.npz", x=x * 3, y=y)
    np.savez(d / "negative.npz", x=x - 1, y=y)
    np.savez(d / "empty.npz", x=np.zeros((0, 1, 8, 8), np.float32), y=np.zeros(0, np.int64))
    np.savez(d / "float-labels.npz", x=x, y=y + 0.5)
    np.savez(d / "nan-labels.npz", x=x, y=np.where(y > 0, np.nan, 0.0))
    np.savez(d / "neg-labels.npz", x=x, y=y - 1)
    np.savez(d / "big-labels.npz", x=x, y=y + 10)
    np.savez(d / "huge-labels.npz", x=x, y=np.full(6, 2**40))
    np.savez(d / "label-shape.npz", x=x, y=y[:3])
    np.savez(d / "label-matrix.npz", x=x, y=np.stack([y, y], 1))
    np.savez(d / "string-labels.npz", x=x, y=np.array(["a"] * 6))
    np.savez(d / "string-x.npz", x=np.array(["a"] * 6), y=y)
    np.savez(d / "scalar-x.npz", x=np.float32(1), y=y)
    np.savez(d / "5d.npz", x=x[:, :, :, :, None], y=y)
    np.savez(d / "binary-int.npz", x=(x > 0.5).astype(np.int64), y=y)
    np.savez(d / "binary-uint8.npz", x=(x > 0.5).astype(np.uint8), y=y)
    np.savez(d / "wide-int.npz", x=(x * 1000).astype(np.int32), y=y)
    np.savez(d / "negative-int.npz", x=(x * 100).astype(np.int16) - 50, y=y)
    np.savez(d / "shape.npz", x=np.zeros((6, 1, 28, 28), np.float32), y=y)
    torch.save({"x": Payload(d / "RAN"), "y": torch.tensor(y)}, d / "pickled.pt")
    torch.save([torch.tensor(x), torch.tensor(y)], d / "list.pt")
    (d / "garbage.pt").write_bytes(b"\x00\x01garbage")
    save_file({"x": torch.tensor(x)}, str(d / "noy.safetensors"))
    (d / "garbage.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    (d / "data.csv").write_text("1,2,3\n")
    make_fifo(d / "fifo.npz")
    # image folders
    (d / "nofolders").mkdir()
    (d / "nofolders" / "a.png").write_bytes(b"")
    _folder(d / "noimages", {"a": []})
    _folder(d / "sizes", {"a": [0], "b": []})
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(d / "sizes" / "b" / "0.png")
    _folder(d / "corrupt", {"a": [0]})
    (d / "corrupt" / "a" / "1.png").write_bytes(b"\x89PNG not really")
    _folder(d / "fifo-image", {"a": [0]})
    make_fifo(d / "fifo-image" / "a" / "x.png")
    _folder(d / "named", {"cat": [0], "dog": [0]})
    _folder(d / "bomb", {"a": []})
    png_bomb(d / "bomb" / "a" / "big.png")
    return d


DATA_CASES = [
    ("{d}/missing.npz", [], "neither a bundled dataset"),
    ("{d}/data.csv", [], "cannot read data file"),
    ("{d}/noy.npz", [], "lacks y"),
    ("{d}/nox.npz", [], "lacks x"),
    ("{d}/objects.npz", [], "cannot read objects.npz"),
    ("{d}/garbage.npz", [], "cannot read garbage.npz"),
    ("{d}/text.npz", [], "cannot read text.npz"),
    ("{d}/pickled.npz", [], "cannot read pickled.npz"),
    ("{d}/nan.npz", [], "NaN or inf"),
    ("{d}/inf.npz", [], "NaN or inf"),
    ("{d}/range.npz", [], "must lie in [0, 1]"),
    ("{d}/negative.npz", [], "must lie in [0, 1]"),
    ("{d}/empty.npz", [], "empty"),
    ("{d}/float-labels.npz", [], "labels must be integers"),
    ("{d}/nan-labels.npz", [], "labels must be integers"),
    ("{d}/neg-labels.npz", [], "labels must be >= 0"),
    ("{d}/big-labels.npz", [], "labels go up to 12"),
    ("{d}/huge-labels.npz", [], "too large"),
    ("{d}/label-shape.npz", [], "vector of 6 labels"),
    ("{d}/label-matrix.npz", [], "vector of 6 labels"),
    ("{d}/string-labels.npz", [], "labels must be integers"),
    ("{d}/string-x.npz", [], "must hold numbers"),
    ("{d}/scalar-x.npz", [], "array of images"),
    ("{d}/5d.npz", [], "must have shape"),
    ("{d}/binary-int.npz", [], "--pixel-scale 1"),
    ("{d}/binary-uint8.npz", [], "--pixel-scale 1"),
    ("{d}/wide-int.npz", [], "--pixel-scale WHITE"),
    ("{d}/negative-int.npz", [], "must lie in [0, 1]"),
    ("{d}/binary-int.npz", ["--pixel-scale", "0"], "positive"),
    ("{d}/binary-int.npz", ["--pixel-scale", "nan"], "positive"),
    ("{d}/shape.npz", [], "input shape"),
    ("{d}/pickled.pt", [], "pickles Python objects"),
    ("{d}/list.pt", [], "must hold a dict"),
    ("{d}/garbage.pt", [], "cannot read garbage.pt"),
    ("{d}/noy.safetensors", [], "lacks y"),
    ("{d}/garbage.safetensors", [], "cannot read garbage.safetensors"),
    ("{d}/fifo.npz", [], "not a regular file"),
    ("{d}/nofolders", [], "no class subfolders"),
    ("{d}/noimages", [], "no images"),
    ("{d}/sizes", [], "differ in size"),
    ("{d}/corrupt", [], "cannot read image"),
    ("{d}/fifo-image", [], "not a regular file"),
    ("{d}/bomb", [], "too large to decode"),
    ("{d}/named", ["--classes", "cat"], "does not list"),
    ("{d}/named", ["--classes", "cat,cat,dog"], "twice"),
    ("{d}/named", ["--classes", "cat,,dog"], "separated by commas"),
]


@pytest.mark.parametrize("data,extra,needle", DATA_CASES, ids=[f"{a.split('/')[-1]} {' '.join(e)}" for a, e, _ in DATA_CASES])
def test_bad_data_is_refused_in_one_line(run_cli, d, tmp_path, data, extra, needle):
    report = tmp_path / "r.json"
    result = {}

    def run():  # a FIFO must not hang the loader: run with a deadline
        result["r"] = run_cli("attack", "--model", "digits-mlp", "--data", data.format(d=d), *extra, "--n", "8",
                              "--attack", "fgsm", "--json", report)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the command hung"
    line = one_error_line(result["r"])
    assert needle in line, line
    assert not report.exists()
    assert not (d / "RAN").exists()


def test_binary_images_are_scaled_as_the_user_says(tmp_path):
    from robustcli.data import DataFormat, load_dataset

    x = np.array([[[[0, 1], [1, 0]]]], dtype=np.uint8).repeat(2, 0)
    np.savez(tmp_path / "b.npz", x=x, y=np.array([0, 1]))
    as_mask = load_dataset(str(tmp_path / "b.npz"), fmt=DataFormat(pixel_scale=1))
    as_8bit = load_dataset(str(tmp_path / "b.npz"), fmt=DataFormat(pixel_scale=255))
    assert as_mask.x.max() == 1.0 and as_mask.provenance == {"pixel_scale": 1}
    assert as_8bit.x.max() == pytest.approx(1 / 255)
    np.savez(tmp_path / "u16.npz", x=np.full((2, 1, 2, 2), 65535, np.uint16), y=np.array([0, 1]))
    assert load_dataset(str(tmp_path / "u16.npz")).x.max() == 1.0


def test_numeric_folder_names_are_labels(tmp_path):
    """A missing class shifts nothing, and 10 is not sorted before 2."""
    from robustcli.data import DataFormat, load_dataset

    root = _folder(tmp_path / "imgs", {"2": [10], "10": [20], "0": [30]})
    data = load_dataset(str(root))
    by_value = {round(float(v) * 255): int(label) for v, label in zip(data.x[:, 0, 0, 0], data.y)}
    assert by_value == {10: 2, 20: 10, 30: 0}
    assert data.provenance["classes"] == {"0": 0, "2": 2, "10": 10}
    named = _folder(tmp_path / "named", {"cat": [10], "dog": [20]})
    data = load_dataset(str(named), fmt=DataFormat(classes=("dog", "cat")))
    assert data.provenance["classes"] == {"dog": 0, "cat": 1}
    assert data.y.tolist() == [0, 1] and round(float(data.x[0].max()) * 255) == 20


def test_report_records_class_mapping(run_cli, tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for label in ("0", "1", "3"):
        (root / label).mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / label / "a.png")
    r = run_cli("attack", "--model", "digits-mlp", "--data", root, "--attack", "fgsm", "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["data_format"]["classes"] == {"0": 0, "1": 1, "3": 3}
