"""Data and model loading: bundled data, users' files, model formats, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from robustcli.archs import build_arch
from robustcli.data import load_dataset
from robustcli.core.errors import InputError
from robustcli.models import load_model, save_model


def test_bundled_splits():
    mnist_test, mnist_train = load_dataset("mnist-5k", "test"), load_dataset("mnist-5k", "train")
    assert len(mnist_test) == 1000 and len(mnist_train) == 4000
    assert mnist_test.input_shape == (1, 28, 28)
    assert 0 <= mnist_test.x.min() and mnist_test.x.max() <= 1
    # Shuffled: every digit appears in the test split, roughly balanced.
    counts = torch.bincount(mnist_test.y, minlength=10)
    assert counts.min() > 60
    digits = load_dataset("digits", "test")
    assert digits.input_shape == (1, 8, 8) and digits.x.max() <= 1


@pytest.mark.parametrize("suffix", [".npz", ".pt", ".safetensors"])
def test_user_tensor_files(tmp_path, suffix):
    x = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)
    y = np.arange(5)
    path = tmp_path / f"d{suffix}"
    if suffix == ".npz":
        np.savez(path, x=x, y=y)
    elif suffix == ".pt":
        torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, path)
    else:
        save_file({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, str(path))
    d = load_dataset(str(path))
    assert d.x.shape == (5, 1, 8, 8) and d.y.tolist() == [0, 1, 2, 3, 4]
    assert torch.allclose(d.x, torch.from_numpy(x))


def test_image_folder(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    d = load_dataset(str(tmp_path))
    assert d.x.shape == (6, 1, 8, 8) and d.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert d.x.max() == pytest.approx(80 / 255)


def test_uint8_nhwc_is_scaled_and_transposed(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.full((2, 4, 4, 3), 255, dtype=np.uint8), y=np.array([0, 1]))
    d = load_dataset(str(tmp_path / "d.npz"))
    assert d.x.shape == (2, 3, 4, 4) and d.x.max() == 1.0


@pytest.mark.parametrize("keys", [("images", "labels"), ("x_test", "y_test"), ("data", "targets")])
def test_other_tools_array_names_are_read(tmp_path, keys):
    x = np.random.default_rng(0).random((4, 1, 8, 8)).astype(np.float32)
    y = np.array([3, 1, 4, 1])
    np.savez(tmp_path / "d.npz", **{keys[0]: x, keys[1]: y})
    d = load_dataset(str(tmp_path / "d.npz"))
    assert d.y.tolist() == y.tolist() and torch.equal(d.x, torch.from_numpy(x))


def test_one_hot_labels_become_class_indices(tmp_path):
    y = np.array([3, 1, 4, 1, 9])
    x = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.eye(10, dtype=np.float32)[y])
    assert load_dataset(str(tmp_path / "d.npz")).y.tolist() == y.tolist()
    soft = np.full((5, 10), 0.1, dtype=np.float32)  # probabilities are not labels
    np.savez(tmp_path / "soft.npz", x=x, y=soft)
    with pytest.raises(InputError, match="vector of 5 labels"):
        load_dataset(str(tmp_path / "soft.npz"))


@pytest.mark.parametrize(
    "x,y,message",
    [
        (np.full((2, 1, 4, 4), np.nan, dtype=np.float32), np.array([0, 1]), "NaN"),
        (np.full((2, 1, 4, 4), 2.0, dtype=np.float32), np.array([0, 1]), "[0, 1]"),
        (np.zeros((0, 1, 4, 4), dtype=np.float32), np.zeros(0, dtype=np.int64), "empty"),
        (np.zeros((2, 1, 4, 4), dtype=np.float32), np.array([0]), "labels"),
        (np.zeros((2, 1, 4, 4), dtype=np.float32), np.array([0, -1]), ">= 0"),
    ],
)
def test_bad_user_data(tmp_path, x, y, message):
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(InputError, match=message.replace("[", r"\[")):
        load_dataset(str(tmp_path / "d.npz"))


def test_unknown_data_name():
    with pytest.raises(InputError, match="neither a bundled dataset"):
        load_dataset("cifar10")


def test_model_formats_roundtrip(tmp_path, digits_mlp, digits_test):
    x = digits_test.x[:8]
    expected = digits_mlp(x)
    # Weights robustcli writes carry arch and normalisation: no --arch needed.
    save_model(digits_mlp, tmp_path / "m.safetensors", "digits-mlp")
    assert torch.allclose(load_model(str(tmp_path / "m.safetensors")).module(x), expected, atol=1e-6)
    # TorchScript and torch.export programs.
    torch.jit.save(torch.jit.trace(digits_mlp, x), tmp_path / "m.pt")
    assert torch.allclose(load_model(str(tmp_path / "m.pt")).module(x), expected, atol=1e-6)
    torch.export.save(torch.export.export(digits_mlp, (x,)), tmp_path / "m.pt2")
    assert torch.allclose(load_model(str(tmp_path / "m.pt2")).module(x), expected, atol=1e-6)
    # A bare state dict needs --arch (and the normalisation, passed as --mean/--std).
    inner = digits_mlp.model
    torch.save(inner.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(InputError, match="--arch"):
        load_model(str(tmp_path / "sd.pt"))
    m = load_model(str(tmp_path / "sd.pt"), arch="digits-mlp", mean=[0.3], std=[0.4]).module
    assert torch.allclose(m(x), expected, atol=1e-6)


def test_pickled_model_needs_opt_in(tmp_path):
    torch.save(build_arch("digits-mlp"), tmp_path / "whole.pt")
    with pytest.raises(InputError, match="--allow-pickle"):
        load_model(str(tmp_path / "whole.pt"))
    assert load_model(str(tmp_path / "whole.pt"), allow_pickle=True).module is not None


def test_factory_arch(tmp_path, monkeypatch, digits_mlp, digits_test):
    (tmp_path / "my_arch.py").write_text(
        "from robustcli.archs import build_arch\n\ndef make():\n    return build_arch('digits-mlp')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.save(digits_mlp.model.state_dict(), tmp_path / "sd.pt")
    m = load_model(str(tmp_path / "sd.pt"), arch="my_arch:make", mean=[0.3], std=[0.4]).module
    assert torch.allclose(m(digits_test.x[:4]), digits_mlp(digits_test.x[:4]), atol=1e-6)
    with pytest.raises(InputError, match="cannot import"):
        load_model(str(tmp_path / "sd.pt"), arch="no_such_pkg.mod:factory")


@pytest.mark.parametrize("content", [b"", b"not a model at all", b"PK\x03\x04garbage"])
def test_corrupt_model_files(tmp_path, content):
    for suffix in (".pt", ".safetensors"):
        path = tmp_path / f"bad{suffix}"
        path.write_bytes(content)
        with pytest.raises(InputError):
            load_model(str(path), arch="digits-mlp")


def test_wrong_weights_for_arch(tmp_path, digits_mlp):
    save_model(digits_mlp, tmp_path / "m.safetensors", "digits-mlp")
    with pytest.raises(InputError, match="do not fit"):
        load_model(str(tmp_path / "m.safetensors"), arch="mnist-mlp")
