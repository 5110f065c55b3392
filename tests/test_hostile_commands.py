"""Every command's own hostile inputs: numbers, configs, report paths, ONNX, VNNLIB, the model cache.

Each case asserts exit 2, one `error:` line, no traceback and no report left behind.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from hostile_files import make_fifo, one_error_line

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402
from onnx_helpers import mlp_onnx, tensor, vnnlib_box  # noqa: E402

ATTACK = ["attack", "--model", "digits-mlp", "--data", "digits", "--n", "4", "--attack", "fgsm"]
CERTIFY = ["certify", "--model", "digits-mlp", "--data", "digits", "--n", "4", "--method", "ibp"]
TRAIN = ["train", "--data", "digits", "--epochs", "1", "--warmup", "0", "--train-n", "16", "--out", "{d}/t.safetensors"]


def _onnx_raw(path: Path, in_shape, nodes=None, inits=(), out_shape=(1, 10)) -> Path:
    """An ONNX file written without the checker, so hostile declared shapes reach the loader."""
    nodes = nodes or [helper.make_node("Flatten", ["x"], ["y"], axis=1)]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        initializer=list(inits),
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def _raw_tensor(name: str, dims: list[int], raw: bytes):
    """An initializer whose declared dims need not match its data (helper.make_tensor checks that)."""
    t = TensorProto()
    t.name, t.data_type, t.raw_data = name, TensorProto.FLOAT, raw
    t.dims.extend(dims)
    return t


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("commands")
    (d / "notyaml.yaml").write_text("key: [unclosed\n")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "unknown.yaml").write_text("no_such_option: 1\n")
    (d / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage\x00")
    (d / "python.yaml").write_text("eps: !!python/object/apply:os.system ['true']\n")
    (d / "a-file").write_text("x")
    make_fifo(d / "fifo.yaml")
    # ONNX
    (d / "garbage.onnx").write_bytes(b"not a protobuf")
    (d / "garbage.onnx.gz").write_bytes(b"not gzip")
    _onnx_raw(d / "negative.onnx", (1, -5))
    _onnx_raw(d / "huge.onnx", (1, 1 << 20, 1 << 22))
    _onnx_raw(d / "zero.onnx", (1, 0))
    _onnx_raw(d / "negbatch.onnx", (-3, 64))
    big_init = _raw_tensor("w", [1 << 20, 1 << 20], b"\x00" * 4)
    _onnx_raw(d / "huge-init.onnx", (1, 64), [helper.make_node("MatMul", ["x", "w"], ["y"])], [big_init])
    bad_init = _raw_tensor("w", [64, 10], b"\x00" * 12)
    _onnx_raw(d / "short-init.onnx", (1, 64), [helper.make_node("MatMul", ["x", "w"], ["y"])], [bad_init])
    w = tensor("w", np.zeros((10, 64), np.float32))
    _onnx_raw(d / "flat64.onnx", (1, 64), [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], [w])
    w3 = tensor("w", np.zeros((10, 8), np.float32))
    _onnx_raw(d / "wrong-shape.onnx", (1, 8, 8), [helper.make_node("MatMul", ["x", "w3t"], ["y"])],
              [tensor("w3t", np.zeros((8, 10), np.float32))], out_shape=(1, 8, 10))
    del w3
    # VNNLIB against a 12-input MLP
    net = mlp_onnx(d / "net.onnx")
    box = vnnlib_box([0.0] * 12, [0.1] * 12, 0, 3)
    decl = "".join(f"(declare-const X_{i} Real)\n" for i in range(12)) + "".join(f"(declare-const Y_{j} Real)\n" for j in range(3))
    bounds = "".join(f"(assert (<= X_{i} 0.1))(assert (>= X_{i} 0.0))\n" for i in range(12))
    specs = {
        "unbalanced": box + "(assert (<= Y_0 Y_1)",
        "extra-close": box + ")",
        "unknown-symbol": box + "(assert (<= Y_0 Z_9))",
        "nonlinear": box + "(assert (<= (* Y_0 Y_1) 0))",
        "nan-constant": box + "(assert (<= Y_0 nan))",
        "inf-constant": box + "(assert (<= X_0 inf))",
        "unbounded-input": decl + "(assert (<= Y_0 Y_1))",
        "gap": "(declare-const X_0 Real)(declare-const X_2 Real)(declare-const Y_0 Real)",
        "no-outputs": "(declare-const X_0 Real)",
        "bad-command": box + "(check-sat-now)",
        "mixed": box + "(assert (<= X_0 Y_1))",
        "sixteen-ors": decl + bounds + "".join(f"(assert (or (<= Y_0 {i}) (<= Y_1 {i})))" for i in range(16)),
        "twenty-ors": decl + bounds + "".join(f"(assert (or (<= Y_0 {i}) (<= Y_1 {i})))" for i in range(20)),
        "deep": decl + bounds + "(assert " + "(and " * 50_000 + "(<= Y_0 Y_1)" + ")" * 50_000 + ")",
        "wrong-inputs": "(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))(assert (>= X_0 0))",
    }
    for name, text in specs.items():
        (d / f"{name}.vnnlib").write_text(text)
    (d / "binary.vnnlib").write_bytes(b"\xff\xfe\x00\x01")
    (d / "notgzip.vnnlib.gz").write_bytes(b"plain text")
    make_fifo(d / "fifo.vnnlib")
    (d / "csv-missing-files.csv").write_text("nope.onnx,nope.vnnlib,10\n")
    rng = np.random.default_rng(0)
    x = rng.random((8, 1, 8, 8)).astype(np.float32)
    np.savez(d / "train.npz", x=x, y=np.arange(8) % 3)
    np.savez(d / "test-labels.npz", x=x, y=np.arange(8) + 5)
    np.savez(d / "test-shape.npz", x=np.zeros((8, 1, 4, 4), np.float32), y=np.arange(8) % 3)

    (d / "csv-bad-timeout.csv").write_text(f"{net},{d / 'deep.vnnlib'},nan\n")
    return d


CASES = [
    # numbers that would read as results
    (ATTACK + ["--eps", "nan"], "finite"),
    (ATTACK + ["--eps", "inf"], "finite"),
    (ATTACK + ["--eps", "-0.1"], "eps must be >= 0"),
    (ATTACK + ["--eps", "1.5"], "exceeds 1"),
    (["attack", "--model", "digits-mlp", "--data", "digits", "--n", "4", "--attack", "pgd-l2", "--eps-l2", "inf"], "finite"),
    (["attack", "--model", "digits-mlp", "--data", "digits", "--n", "4", "--attack", "cw", "--confidence", "nan"], "finite"),
    (["attack", "--model", "digits-mlp", "--data", "digits", "--n", "4", "--attack", "cw", "--confidence", "-inf"], "finite"),
    (CERTIFY + ["--norm", "l2", "--eps", "inf"], "finite"),
    (CERTIFY + ["--eps", "nan"], "finite"),
    (["tightness", "--model", "digits-mlp", "--data", "digits", "--n", "4", "--eps", "inf"], "finite"),
    (["analyze", "scaling", "--model", "digits-mlp", "--data", "digits", "--n", "4", "--eps-max", "nan"], "finite"),
    (["threshold", "--model", "digits-mlp", "--unsafe-class", "1", "--target-fnr", "nan"], "finite"),
    (TRAIN + ["--eps", "nan"], "finite"),
    (TRAIN + ["--lr", "inf"], "finite"),
    (["train-ibp", "--data", "digits", "--eps", "inf", "--out", "{d}/t.safetensors"], "finite"),
    (["distill", "--data", "digits", "--temperature", "nan", "--out", "{d}/t.safetensors"], "finite"),
    (["train-moe", "--data", "digits", "--eps", "nan", "--out", "{d}/t.safetensors"], "finite"),
    # configs
    (ATTACK + ["--config", "{d}/notyaml.yaml"], "not valid YAML"),
    (ATTACK + ["--config", "{d}/list.yaml"], "mapping"),
    (ATTACK + ["--config", "{d}/unknown.yaml"], "unknown key"),
    (ATTACK + ["--config", "{d}/binary.yaml"], "--config"),
    (ATTACK + ["--config", "{d}/python.yaml"], "not valid YAML"),
    (ATTACK + ["--config", "{d}/missing.yaml"], "cannot read"),
    (ATTACK + ["--config", "{d}/fifo.yaml"], "not a regular file"),
    (["eval", "{d}/fifo.yaml"], "not a regular file"),
    (["eval", "{d}/missing.yaml"], "missing.yaml"),
    (["eval", "{d}/notyaml.yaml"], "notyaml.yaml"),
    (["eval", "{d}/list.yaml"], "list.yaml"),
    (["eval", "{d}/binary.yaml"], "binary.yaml"),
    (["eval", "{d}/python.yaml"], "python.yaml"),
    # report paths
    (ATTACK + ["--json", "{d}/no-folder/r.json"], "does not exist"),
    (ATTACK + ["--json", "{d}"], "is a directory"),
    (ATTACK + ["--json", "{d}/a-file/r.json"], "Not a directory"),
    (ATTACK + ["--json", "{d}/loop.json"], "symlink loop"),
    (CERTIFY + ["--json", "{d}/no-folder/r.json"], "does not exist"),
    (["eval", "configs/ci-example.yaml", "--json", "{d}/no-folder/r.json"], "does not exist"),
    (["eval", "configs/ci-example.yaml", "--junit", "{d}/r.txt"], ".xml"),
    (TRAIN[:-1] + ["{d}/no-folder/t.safetensors"], "does not exist"),
    (TRAIN[:-1] + ["{d}/t.txt"], "safetensors"),
    (["train", "--data", "{d}/train.npz", "--test-data", "{d}/test-labels.npz", "--arch", "digits-mlp", "--epochs", "1",
      "--warmup", "0", "--out", "{d}/t.safetensors"], "--test-data labels go up to 12"),
    (["train", "--data", "{d}/train.npz", "--test-data", "{d}/test-shape.npz", "--arch", "digits-mlp", "--epochs", "1",
      "--warmup", "0", "--out", "{d}/t.safetensors"], "same kind"),
    (["train-ibp", "--data", "{d}/train.npz", "--test-data", "{d}/test-labels.npz", "--eps", "0.1",
      "--arch", "digits-mlp-bn", "--epochs", "1", "--out", "{d}/t.safetensors"], "labels"),
    # ONNX
    (["attack", "--model", "{d}/garbage.onnx", "--data", "digits", "--n", "4"], "garbage.onnx"),
    (["attack", "--model", "{d}/garbage.onnx.gz", "--data", "digits", "--n", "4"], "garbage.onnx.gz"),
    (["attack", "--model", "{d}/negative.onnx", "--data", "digits", "--n", "4"], "must be >= 1"),
    (["attack", "--model", "{d}/zero.onnx", "--data", "digits", "--n", "4"], "must be >= 1"),
    (["attack", "--model", "{d}/negbatch.onnx", "--data", "digits", "--n", "4"], "negative batch"),
    (["attack", "--model", "{d}/huge.onnx", "--data", "digits", "--n", "4"], "elements"),
    (["attack", "--model", "{d}/huge-init.onnx", "--data", "digits", "--n", "4"], "huge-init.onnx"),
    (["attack", "--model", "{d}/short-init.onnx", "--data", "digits", "--n", "4"], "short-init.onnx|initializer"),
    (["attack", "--model", "{d}/wrong-shape.onnx", "--data", "digits", "--n", "4"], "declares input shape"),
    (["attack", "--model", "{d}/net.onnx", "--data", "digits", "--n", "4"], "declares input shape"),
    # VNNLIB
    *[
        (["certify", "--model", "{d}/net.onnx", "--spec", f"{{d}}/{name}"], needle)
        for name, needle in [
            ("unbalanced.vnnlib", "never closed"), ("extra-close.vnnlib", "unbalanced"),
            ("unknown-symbol.vnnlib", "unknown symbol"), ("nonlinear.vnnlib", "not linear"),
            ("nan-constant.vnnlib", "finite"), ("inf-constant.vnnlib", "finite"),
            ("unbounded-input.vnnlib", "no finite lower and upper"), ("gap.vnnlib", "without gaps"),
            ("no-outputs.vnnlib", "declares no"), ("bad-command.vnnlib", "unsupported command"),
            ("mixed.vnnlib", "mixes inputs"), ("sixteen-ors.vnnlib", "cells of memory"),
            ("twenty-ors.vnnlib", "more than the 100,000"), ("wrong-inputs.vnnlib", "input"),
            ("binary.vnnlib", "not a text file"), ("notgzip.vnnlib.gz", "not a valid gzip"),
            ("fifo.vnnlib", "not a regular file"), ("missing.vnnlib", "missing.vnnlib"),
        ]
    ],
    (["vnncomp", "{d}/missing.csv"], "missing.csv"),
    (["vnncomp", "{d}/csv-bad-timeout.csv"], "timeout"),
]


@pytest.fixture(scope="module", autouse=True)
def _loop(d):
    loop = d / "loop.json"
    if not loop.is_symlink():
        os.symlink(loop, loop)


@pytest.mark.parametrize("args,needle", CASES, ids=[" ".join(a[:1] + a[-2:])[:70] for a, _ in CASES])
def test_bad_command_input_is_one_line(run_cli, d, args, needle):
    args = [a.format(d=d) for a in args]
    result = {}

    def run():
        result["r"] = run_cli(*args)

    t = threading.Thread(target=run, daemon=True)  # a FIFO must not hang any reader
    t.start()
    t.join(120)
    assert not t.is_alive(), "the command hung"
    line = one_error_line(result["r"])
    assert any(n in line for n in needle.split("|")), line
    assert not (d / "t.safetensors").exists() and not (d / "r.json").exists()


def test_deep_vnnlib_parses_without_recursion(d):
    from robustcli.certify.vnnlib import read_vnnlib

    prop = read_vnnlib(d / "deep.vnnlib")
    assert prop.n_inputs == 12 and len(prop.cases) == 1


@pytest.mark.parametrize(
    "module, limit, read, name, filler, words",
    [
        ("vnnlib", "MAX_TEXT_BYTES", "read_vnnlib", "bomb.vnnlib.gz", b" ", "unpacks to more than 1 MB"),
        ("onnx_import", "MAX_ONNX_BYTES", "onnx_bytes", "bomb.onnx.gz", b"\x00", "unpacks to more than"),
    ],
)
def test_gzip_bomb_is_cut_off(tmp_path, monkeypatch, module, limit, read, name, filler, words):
    """A 4 MB gzip stream of one byte value, read under a 1 MB limit."""
    import importlib

    from robustcli.core.errors import InputError

    reader = importlib.import_module(f"robustcli.certify.{module}")
    monkeypatch.setattr(reader, limit, 1 << 20)
    bomb = tmp_path / name
    bomb.write_bytes(gzip.compress(filler * (4 << 20)))
    with pytest.raises(InputError, match=words):
        getattr(reader, read)(bomb)


def test_flat_onnx_input_takes_image_data(run_cli, d, tmp_path):
    """A flat declared input with as many values per point as the data is fed the data flattened."""
    r = run_cli("attack", "--model", d / "flat64.onnx", "--data", "digits", "--n", "4", "--attack", "fgsm")
    assert r.exit_code == 0, r.output


# -- writing reports ---------------------------------------------------------------------------


def test_report_into_dev_null_keeps_the_device(run_cli):
    r = run_cli(*ATTACK, "--json", "/dev/null")
    assert r.exit_code == 0, r.output
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_report_into_a_fifo_is_written_straight_in(run_cli, tmp_path):
    fifo = make_fifo(tmp_path / "r.json")
    got = {}

    def read():
        with open(fifo) as f:
            got["text"] = f.read()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    r = run_cli(*ATTACK, "--json", fifo)
    reader.join(30)
    assert r.exit_code == 0, r.output
    assert json.loads(got["text"])["command"] == "attack"
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_reports_honour_the_umask(run_cli, tmp_path):
    old = os.umask(0o022)
    try:
        r = run_cli(*ATTACK, "--json", tmp_path / "r.json")
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(os.stat(tmp_path / "r.json").st_mode) == 0o644


def test_report_through_a_symlink_replaces_the_target(run_cli, tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    os.chmod(target, 0o640)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    r = run_cli(*ATTACK, "--json", link)
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and json.loads(target.read_text())["command"] == "attack"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640


# -- the built-in model cache --------------------------------------------------------------------


def test_cache_pointing_at_a_file_is_one_line(run_cli, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.write_text("a file")
    monkeypatch.setenv("ROBUSTCLI_CACHE", str(cache))
    line = one_error_line(run_cli(*ATTACK))
    assert "is a file" in line and "ROBUSTCLI_CACHE" in line


def test_concurrent_first_uses_train_once(tmp_path, monkeypatch):
    """Threads stand in for processes: the file lock (flock) excludes both alike."""
    import time

    import robustcli.zoo as zoo

    monkeypatch.setenv("ROBUSTCLI_CACHE", str(tmp_path))
    trained = []
    real_train = zoo._train_builtin

    def slow_train(name, path, progress):
        trained.append(name)
        time.sleep(0.5)  # long enough that the others arrive while this one holds the lock
        return real_train(name, path, progress)

    monkeypatch.setattr(zoo, "_train_builtin", slow_train)
    monkeypatch.setattr(zoo, "RECIPES", {**zoo.RECIPES, "digits-mlp": zoo.Recipe(epochs=1)})
    results, errors = [], []

    def use():
        try:
            results.append(zoo.builtin_model("digits-mlp", progress=False))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=use) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 3
    assert trained == ["digits-mlp"]


@pytest.mark.parametrize(
    "where, err, needle",
    [("mkstemp", "EROFS", "read-only"), ("mkstemp", "EACCES", "ermission denied"), ("replace", "ENOSPC", "disk is full"),
     ("replace", "EIO", "error")],
)
def test_file_system_failures_are_one_line_and_leave_nothing(run_cli, digits_mlp, tmp_path, monkeypatch, where, err, needle):
    """A read-only, full or failing disk (simulated: the tests run as root, which ignores permissions)."""
    import errno

    import robustcli.core.files as files

    code = getattr(errno, err)

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.tempfile if where == "mkstemp" else files.os, where, fail)
    line = one_error_line(run_cli(*ATTACK, "--json", tmp_path / "r.json"))
    monkeypatch.undo()
    assert needle in line and "r.json" in line
    assert list(tmp_path.iterdir()) == []


def test_read_only_model_cache_is_one_line(run_cli, tmp_path, monkeypatch):
    import errno

    import robustcli.core.files as files
    import robustcli.zoo as zoo

    monkeypatch.setenv("ROBUSTCLI_CACHE", str(tmp_path))
    monkeypatch.setattr(zoo, "RECIPES", {**zoo.RECIPES, "digits-mlp": zoo.Recipe(epochs=1)})

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    line = one_error_line(run_cli(*ATTACK))
    monkeypatch.undo()
    assert "read-only" in line and "digits-mlp" in line
    assert not list(tmp_path.glob("*.safetensors"))


@pytest.mark.slow
def test_concurrent_first_uses_in_processes_train_once(tmp_path):
    """Three processes asking for the same uncached built-in: one trains, the others wait and load."""
    import subprocess
    import sys

    script = (
        "import sys, uuid, pathlib\n"
        "import robustcli.zoo as zoo\n"
        "real = zoo._train_builtin\n"
        "def counted(name, path, progress):\n"
        f"    pathlib.Path({str(tmp_path)!r}, 'trained-' + uuid.uuid4().hex).touch()\n"
        "    return real(name, path, progress)\n"
        "zoo._train_builtin = counted\n"
        "zoo.EPOCHS = {'digits': 2, 'mnist': 1}\n"
        "zoo.builtin_model('digits-mlp', progress=False)\n"
    )
    env = {**os.environ, "ROBUSTCLI_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    assert len(list(tmp_path.glob("trained-*"))) == 1
    assert len(list((tmp_path / "cache").glob("digits-mlp-*.safetensors"))) == 1
