"""Hostile and malformed model files and model options: one line, exit 2, no traceback, no report.

Every case runs through `attack` (the commands share one loader, `robustcli.session`); the
commands' own entry points are covered by test_hostile_commands.py.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from hostile_files import (
    Constant, digits_mlp_state, exported, make_fifo, one_error_line, rewrite_zip, safetensors_model, torchscript,
)


class IntLogits(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 10, dtype=torch.int64)


class NanForSomePoints(nn.Module):
    """Finite logits on the first two points (the shape probe), NaN on the third."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 10)
        if x.shape[0] > 2:
            out[2] = float("nan")
        return out


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    state = digits_mlp_state()
    torch.save(state, d / "state.pt")
    (d / "empty.pt").write_bytes(b"")
    (d / "garbage.pt").write_bytes(b"\x80\x02garbage")
    (d / "folder.pt").mkdir()
    make_fifo(d / "fifo.pt")
    make_fifo(d / "fifo.onnx")
    torch.save(list(state.values()), d / "list.pt")
    torch.save({"a": 1, "b": "text"}, d / "plain-dict.pt")
    torch.save({}, d / "empty-dict.pt")
    torch.save(torch.zeros(3), d / "tensor.pt")
    with zipfile.ZipFile(d / "zip.pt", "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    (d / "truncated.pt").write_bytes((d / "state.pt").read_bytes()[:200])
    # safetensors
    safetensors_model(d / "ok.safetensors", {"robustcli.arch": "digits-mlp"})
    safetensors_model(d / "noarch.safetensors", {})
    safetensors_model(d / "unknown-arch.safetensors", {"robustcli.arch": "resnet9000"})
    safetensors_model(d / "wrong-arch.safetensors", {"robustcli.arch": "mnist-mlp"})
    for name, mean, std in [("nan-mean", "[NaN]", "[0.4]"), ("zero-std", "[0.3]", "[0.0]"), ("neg-std", "[0.3]", "[-1]"),
                            ("inf-std", "[0.3]", "[Infinity]"), ("text-mean", "gray", "[0.4]"), ("len", "[0.3, 0.3]", "[0.4]"),
                            ("obj-mean", '{"a": 1}', "[0.4]"), ("empty-stats", "[]", "[]")]:
        safetensors_model(d / f"{name}.safetensors", {"robustcli.arch": "digits-mlp", "robustcli.mean": mean, "robustcli.std": std})
    safetensors_model(d / "mean-only.safetensors", {"robustcli.arch": "digits-mlp", "robustcli.mean": "[0.3]"})
    (d / "empty.safetensors").write_bytes(b"")
    (d / "header.safetensors").write_bytes((2**40).to_bytes(8, "little") + b"{}")
    (d / "badjson.safetensors").write_bytes((10).to_bytes(8, "little") + b"{not json}")
    raw = (d / "ok.safetensors").read_bytes()
    (d / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    save_file({"w": torch.zeros(2)}, str(d / "alien.safetensors"), metadata={"robustcli.arch": "digits-mlp"})
    # TorchScript models with unusable outputs
    torchscript(d / "nan.pt", Constant(float("nan")))
    torchscript(d / "inf.pt", Constant(float("inf")))
    torchscript(d / "neginf.pt", Constant(float("-inf")))
    torchscript(d / "zero-classes.pt", Constant(0.0, classes=0))
    torchscript(d / "int.pt", IntLogits())
    torchscript(d / "nan-third.pt", NanForSomePoints())
    # torch.export
    clean = exported(d / "clean.pt2")
    (d / "garbage.pt2").write_bytes(b"PK\x03\x04 not really")
    rewrite_zip(clean, d / "old-format.pt2", lambda n, b: None if n.endswith("archive_format") else b)
    rewrite_zip(clean, d / "no-program.pt2", lambda n, b: None if "/models/" in n else b)
    with zipfile.ZipFile(d / "two-roots.pt2", "w") as z:
        z.writestr("a/archive_format", "pt2")
        z.writestr("b/models/model.json", "{}")

    def bad_config(name, data):
        return b"[1, 2" if name.endswith("model_weights_config.json") else data

    rewrite_zip(clean, d / "bad-config.pt2", bad_config)
    return d


MODEL_CASES = [
    (["--model", "{d}/missing.pt"], "neither a built-in model"),
    (["--model", "no-such-builtin"], "neither a built-in model"),
    (["--model", "{d}/folder.pt"], "is a folder"),
    (["--model", "{d}/fifo.pt"], "not a regular file"),
    (["--model", "{d}/fifo.onnx"], "not a regular file"),
    (["--model", "{d}/empty.pt", "--arch", "digits-mlp"], "not a valid model file"),
    (["--model", "{d}/garbage.pt", "--arch", "digits-mlp"], "not a valid model file"),
    (["--model", "{d}/truncated.pt", "--arch", "digits-mlp"], "not a valid model file"),
    (["--model", "{d}/zip.pt", "--arch", "digits-mlp"], "not a valid model file"),
    (["--model", "{d}/list.pt"], "holds a list"),
    (["--model", "{d}/plain-dict.pt"], "holds a dict"),
    (["--model", "{d}/empty-dict.pt", "--arch", "digits-mlp"], "holds a dict"),
    (["--model", "{d}/tensor.pt"], "holds a Tensor"),
    (["--model", "{d}/state.pt"], "pass its architecture with --arch"),
    (["--model", "{d}/state.pt", "--arch", "mnist-mlp"], "do not fit the architecture"),
    (["--model", "{d}/state.pt", "--arch", "resnet9000"], "unknown architecture"),
    (["--model", "{d}/state.pt", "--arch", ":"], "package.module:function"),
    (["--model", "{d}/state.pt", "--arch", "no_such_module_xyz:f"], "cannot import"),
    (["--model", "{d}/state.pt", "--arch", "json:dumps"], "SystemExit|TypeError|raised"),
    (["--model", "{d}/state.pt", "--arch", "os:getcwd"], "not a torch.nn.Module"),
    (["--model", "{d}/state.pt", "--arch", "sys:exit"], "raised SystemExit"),
    (["--model", "{d}/state.pt", "--arch", "math:pi"], "not a function"),
    (["--model", "{d}/noarch.safetensors"], "does not say its architecture"),
    (["--model", "{d}/unknown-arch.safetensors"], "unknown architecture"),
    (["--model", "{d}/wrong-arch.safetensors"], "do not fit the architecture"),
    (["--model", "{d}/alien.safetensors"], "do not fit the architecture"),
    (["--model", "{d}/nan-mean.safetensors"], "finite"),
    (["--model", "{d}/zero-std.safetensors"], "positive"),
    (["--model", "{d}/neg-std.safetensors"], "positive"),
    (["--model", "{d}/inf-std.safetensors"], "finite"),
    (["--model", "{d}/text-mean.safetensors"], "lists of numbers"),
    (["--model", "{d}/obj-mean.safetensors"], "lists of numbers"),
    (["--model", "{d}/len.safetensors"], "one per channel"),
    (["--model", "{d}/empty-stats.safetensors"], "one per channel"),
    (["--model", "{d}/mean-only.safetensors"], "lists of numbers"),
    (["--model", "{d}/empty.safetensors"], "corrupt safetensors"),
    (["--model", "{d}/header.safetensors"], "corrupt safetensors"),
    (["--model", "{d}/badjson.safetensors"], "corrupt safetensors"),
    (["--model", "{d}/cut.safetensors"], "corrupt safetensors"),
    (["--model", "{d}/nan.pt"], "NaN or inf"),
    (["--model", "{d}/inf.pt"], "NaN or inf"),
    (["--model", "{d}/neginf.pt"], "NaN or inf"),
    (["--model", "{d}/nan-third.pt"], "clean data point 2"),
    (["--model", "{d}/zero-classes.pt"], "0 classes"),
    (["--model", "{d}/int.pt"], "float logits"),
    (["--model", "{d}/garbage.pt2"], "torch.export program"),
    (["--model", "{d}/old-format.pt2"], "archive_format"),
    (["--model", "{d}/no-program.pt2"], "no models"),
    (["--model", "{d}/two-roots.pt2"], "one archive folder"),
    (["--model", "{d}/bad-config.pt2"], "not a valid payload config"),
    (["--model", "digits-mlp", "--mean", "nan", "--std", "1"], "finite"),
    (["--model", "digits-mlp", "--mean", "0.5", "--std", "inf"], "finite"),
    (["--model", "digits-mlp", "--mean", "0.5", "--std", "0"], "positive"),
    (["--model", "digits-mlp", "--mean", "0.5"], "go together"),
    (["--model", "digits-mlp", "--mean", "0.5", "0.5", "--std", "1"], "one per channel"),
    # (built-in MNIST models train on the official MNIST, which tests never download)
    (["--model", "digits-mlp", "--data", "mnist-5k"], "input shape"),
]


@pytest.mark.parametrize("args,needle", MODEL_CASES, ids=[" ".join(a)[:60] for a, _ in MODEL_CASES])
def test_bad_model_is_refused_in_one_line(run_cli, d, tmp_path, args, needle):
    report = tmp_path / "r.json"
    args = [a.format(d=d) for a in args]
    if "--data" not in args:
        args += ["--data", "digits"]
    line = one_error_line(run_cli("attack", *args, "--n", "8", "--attack", "fgsm", "--json", report))
    assert any(n in line for n in needle.split("|")), line
    assert not report.exists()


def test_a_model_that_fits_is_still_accepted(run_cli, d, tmp_path):
    for model in ("ok.safetensors", "clean.pt2"):
        r = run_cli("attack", "--model", d / model, "--data", "digits", "--n", "8", "--attack", "fgsm",
                    "--json", tmp_path / "r.json")
        assert r.exit_code == 0, r.output
        assert json.loads((tmp_path / "r.json").read_text())["n"] == 8


def test_nan_logits_refused_before_any_attack_in_every_engine(d, digits_test):
    """The check lives in session loading, which every model-reading command goes through."""
    from robustcli.core.errors import InputError
    from robustcli.session import open_workload

    with pytest.raises(InputError, match="NaN or inf"):
        open_workload(str(d / "nan.pt"), "digits", n=4)
    w = open_workload("digits-mlp", "digits", n=4)
    assert w.num_classes == 10 and np.isfinite(w.data.x.numpy()).all()
