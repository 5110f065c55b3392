"""Builders of hostile and malformed inputs for the tests/test_hostile_*.py suites.

Every file is made by the tests themselves. A "payload" is a pickle whose unpickling creates a
marker file: a test that loads it asserts both the refusal and that the marker does not exist.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn


class Payload:
    """Unpickling this object opens (creates) `marker`: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def one_error_line(result, code: int = 2) -> str:
    """The result's single error line; asserts the exit code and that no traceback was printed."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    prefix = "error: " if code == 2 else "check failed: "
    lines = [line for line in result.stderr.splitlines() if line.startswith(("error", "check failed"))]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(prefix) and result.stderr.rstrip().endswith(lines[0]), result.stderr
    return lines[0]


def digits_mlp_state() -> dict[str, torch.Tensor]:
    """A digits-mlp state dict (untrained weights: loading, not accuracy, is what these tests probe)."""
    from robustcli.archs import build_arch

    torch.manual_seed(0)
    return build_arch("digits-mlp").state_dict()


def safetensors_model(path: Path, meta: dict[str, str], state: dict[str, torch.Tensor] | None = None) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in (state or digits_mlp_state()).items()}, str(path), metadata=meta)
    return path


class Constant(nn.Module):
    """Logits of a fixed value (nan, inf) for every input: a model no accuracy can be read from."""

    def __init__(self, value: float, classes: int = 10):
        super().__init__()
        self.value, self.classes = value, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], self.classes), self.value)


def torchscript(path: Path, module: nn.Module) -> Path:
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def exported(path: Path) -> Path:
    """A clean torch.export archive of a digits-shaped linear model."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def rewrite_zip(src: Path, dst: Path, edit) -> Path:
    """Copy a zip entry by entry; `edit(name, data)` returns new bytes, None to drop, or a list of
    (name, bytes) to write instead."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            out = edit(name, zin.read(name))
            if out is None:
                continue
            for n, data in out if isinstance(out, list) else [(name, out)]:
                zout.writestr(n, data)
    return dst


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def pt2_pickled_weight(clean: Path, dst: Path, marker: Path) -> Path:
    """A .pt2 whose weights config says use_pickle for one weight, which holds a payload."""

    def edit(name: str, data: bytes):
        if name.endswith("model_weights_config.json"):
            cfg = json.loads(data)
            first = next(iter(cfg["config"]))
            cfg["config"][first]["use_pickle"] = True
            return json.dumps(cfg).encode()
        if name.endswith("data/weights/weight_0"):
            return torch_bytes(Payload(marker))
        return data

    return rewrite_zip(clean, dst, edit)


def pt2_opaque_constant(clean: Path, dst: Path, marker: Path) -> Path:
    """A .pt2 with an opaque constant (read by pickle.loads)."""

    def edit(name: str, data: bytes):
        if name.endswith("model_constants_config.json"):
            root = name.split("/", 1)[0]
            cfg = {"config": {"evil": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}}
            return [(name, json.dumps(cfg).encode()), (f"{root}/data/constants/opaque_obj_0", pickle.dumps(Payload(marker)))]
        return data

    return rewrite_zip(clean, dst, edit)


def pt2_pickled_sample_inputs(clean: Path, dst: Path, marker: Path) -> Path:
    """A .pt2 whose sample inputs need weights_only=False (torch retries with full unpickling)."""

    def edit(name: str, data: bytes):
        if name.endswith("data/sample_inputs/model.pt"):
            return torch_bytes(((Payload(marker),), {}))
        return data

    return rewrite_zip(clean, dst, edit)


def pt2_extra_entry(clean: Path, dst: Path, entry: str, data: bytes) -> Path:
    root = zipfile.ZipFile(clean).namelist()[0].split("/", 1)[0]

    def edit(name: str, payload: bytes):
        if name.endswith("archive_format"):
            return [(name, payload), (f"{root}/{entry}", data)]
        return payload

    return rewrite_zip(clean, dst, edit)


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def png_bomb(path: Path, side: int = 40_000) -> Path:
    """A few-hundred-byte PNG whose header claims side x side pixels (PIL's bomb limit is ~179M)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path
