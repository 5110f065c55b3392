"""Loading and saving models: built-in names, TorchScript, torch.export, safetensors, state dicts, ONNX.

Model files are untrusted input: nothing is unpickled beyond tensors (`weights_only=True`) unless
the user opts in with `allow_pickle`.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from robustcli.core import distributed
from robustcli.archs import ARCHS, build_arch
from robustcli.core.nn import Normalized, model_float_dtype
from robustcli.core.errors import InputError, first_line
from robustcli.core.files import atomic_path
from robustcli.core.torchload import is_pickle_refusal

META_PREFIX = "robustcli."


@dataclass
class LoadedModel:
    module: nn.Module
    name: str  # what the user passed
    arch: str | None = None
    meta: dict[str, str] = field(default_factory=dict)
    dataset: str | None = None  # bundled dataset a built-in model was trained on


def wrap_normalization(model: nn.Module, mean: list[float] | None, std: list[float] | None) -> nn.Module:
    if mean is None and std is None:
        return model
    if mean is None or std is None:
        raise InputError("--mean and --std go together; pass both (one value per channel)")
    if len(mean) != len(std):
        raise InputError(f"--mean has {len(mean)} values but --std has {len(std)}; give one per channel")
    if not all(math.isfinite(v) for v in list(mean) + list(std)):
        raise InputError("--mean and --std must be finite numbers (not nan or inf)")
    if any(s <= 0 for s in std):
        raise InputError("--std values must be positive")
    # A float64 model (a float64 ONNX file kept in its precision) normalises in float64 too.
    dtype = torch.float64 if model_float_dtype(model) == torch.float64 else torch.float32
    return Normalized(model, mean, std, dtype=dtype)


def save_model(model: nn.Module, path: str | Path, arch: str, extra: dict[str, str] | None = None) -> None:
    """Write weights as safetensors with the architecture and normalisation in the metadata, atomically.

    Under torchrun only rank 0 writes (every rank holds the same weights).
    """
    from safetensors.torch import save_file

    if not distributed.is_main():
        return

    meta = {META_PREFIX + "arch": arch}
    if isinstance(model, Normalized):
        meta[META_PREFIX + "mean"] = json.dumps(model.mean.flatten().tolist())
        meta[META_PREFIX + "std"] = json.dumps(model.std.flatten().tolist())
        inner = model.model
    else:
        inner = model
    meta.update({META_PREFIX + k: str(v) for k, v in (extra or {}).items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in inner.state_dict().items()}
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot write {path}: cannot create folder {path.parent} ({e.strerror})") from None
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=meta)
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - safetensors reports I/O failures as its own error type
            raise InputError(f"cannot write {path}: {first_line(e)}") from None


def read_safetensors_model(path: Path, arch: str | None) -> tuple[nn.Module, str, dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - header or payload corrupt
        raise InputError(f"cannot read model {path.name}: corrupt safetensors file ({first_line(e)})") from None
    meta = {k[len(META_PREFIX) :]: v for k, v in raw_meta.items() if k.startswith(META_PREFIX)}
    # An architecture the user passed may be their own factory; one the file names must be built-in.
    from_user = arch is not None
    arch = arch or meta.get("arch")
    if arch is None:
        raise InputError(f"{path.name} does not say its architecture; pass --arch NAME, --arch path/to/file.py:factory --arch path/to/file.py:factory or --arch package.module:factory")
    model = _load_state(build_arch(arch, allow_factory=from_user), state, path.name)
    if "mean" in meta or "std" in meta:
        mean, std = _meta_stats(meta, path.name)
        model = Normalized(model, mean, std)
    return model, arch, meta


def _meta_stats(meta: dict[str, str], source: str) -> tuple[list[float], list[float]]:
    """The normalisation mean/std in a model's metadata, checked like --mean/--std."""
    try:
        mean, std = json.loads(meta["mean"]), json.loads(meta["std"])
        mean, std = [float(v) for v in mean], [float(v) for v in std]
    except (KeyError, ValueError, TypeError):
        raise InputError(f"{source}: metadata mean/std must both be lists of numbers; re-save the model") from None
    _check_stats(mean, std, f"{source} metadata")
    return mean, std


def _check_stats(mean: list[float], std: list[float], source: str) -> None:
    if not mean or len(mean) != len(std):
        raise InputError(f"{source}: mean has {len(mean)} values but std has {len(std)}; give one per channel")
    if not all(math.isfinite(v) for v in mean + std):
        raise InputError(f"{source}: mean and std must be finite numbers")
    if any(s <= 0 for s in std):
        raise InputError(f"{source}: std values must be positive")


def _load_state(model: nn.Module, state: dict, source: str) -> nn.Module:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = first_line(e) if str(e) else "mismatch"
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:3])
        raise InputError(f"weights in {source} do not fit the architecture: {first} {detail}".strip()) from None
    return model


class ExportedModule(nn.Module):
    """A torch.export program as a module; such programs reject .eval()/.train(), which are no-ops here.

    `torch.export.export(model, (x,))` without `dynamic_shapes` fixes the batch size to x's (often 1),
    and the program then refuses any other batch. Such a program runs on chunks of its own batch size,
    the last chunk padded with copies of its last point (the padding's outputs are dropped), so
    attacks and evaluation work on it unchanged, only slower. A graph that normalises with batch
    statistics would see the padding; exported graphs are traced in eval mode as a rule."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.program = module
        self.fixed_batch = fixed_batch_size(module)

    def train(self, mode: bool = True) -> "ExportedModule":
        self.training = mode  # the exported graph was traced in its own mode; nothing to switch
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.fixed_batch
        if b is None or len(x) == b:
            return self.program(x)
        outs = []
        for i in range(0, max(len(x), 1), b):
            part = x[i : i + b]
            n = len(part)
            pad = part[-1:] if n else x.new_zeros(1, *x.shape[1:])
            outs.append(self.program(torch.cat([part, pad.expand(b - n, *x.shape[1:])]))[:n])
        return torch.cat(outs)


def fixed_batch_size(program: nn.Module) -> int | None:
    """The batch size an exported program's (first) input is fixed to, or None where it is symbolic."""
    graph = getattr(program, "graph", None)
    for node in graph.nodes if graph is not None else ():
        if node.op == "placeholder":
            val = node.meta.get("val")
            shape = getattr(val, "shape", None)
            if shape is not None and len(shape) > 0 and isinstance(shape[0], int):
                return int(shape[0])
            return None
    return None


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def read_exported_program(path: Path, allow_pickle: bool) -> nn.Module:
    """A `.pt2` program as a module, refusing archives that would be unpickled unless allowed."""
    from robustcli.pt2_archive import pickled_entries

    try:
        reasons = pickled_entries(path)
    except ValueError as e:
        raise InputError(f"cannot read {path.name} as a torch.export program: {e}") from None
    if reasons and not allow_pickle:
        more = f" and {len(reasons) - 1} more" if len(reasons) > 1 else ""
        raise InputError(
            f"{path.name} holds pickled or native payloads ({reasons[0]}{more}), which can run arbitrary "
            "code when loaded; re-export it with torch.export.save from tensors only, or pass --allow-pickle "
            "if you trust the file"
        )
    if reasons:
        _warn_pickle(path)
    try:
        return torch.export.load(str(path)).module()
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot read {path.name} as a torch.export program: {first_line(e)}") from None


def _warn_pickle(path: Path) -> None:
    import sys

    print(f"warning: unpickling {path.name} because --allow-pickle was given; it can run arbitrary code", file=sys.stderr)


def read_torch_file(path: Path, arch: str | None, allow_pickle: bool) -> tuple[nn.Module, str | None]:
    if path.suffix == ".pt2":
        module = ExportedModule(read_exported_program(path, allow_pickle))
        if module.fixed_batch is not None and module.fixed_batch > 0:
            import sys

            print(f"note: {path.name} was exported with a fixed batch size of {module.fixed_batch}, so it runs "
                  f"{module.fixed_batch} point(s) at a time; export with dynamic_shapes=({{0: "
                  "torch.export.Dim('batch')}},) to run whole batches", file=sys.stderr)
        return module, None
    if _is_torchscript(path):
        try:
            return torch.jit.load(str(path), map_location="cpu"), None
        except Exception as e:  # noqa: BLE001
            raise InputError(f"cannot read TorchScript model {path.name}: {first_line(e)}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        # Only a pickle that names Python classes or functions needs --allow-pickle; anything else is corrupt.
        if not is_pickle_refusal(e):
            raise InputError(f"cannot read model {path.name}: not a valid model file ({first_line(e)})") from None
        if not allow_pickle:
            raise InputError(
                f"{path.name} is a pickled Python object, which can run arbitrary code when loaded; "
                "save a state dict, TorchScript or .safetensors instead, or pass --allow-pickle "
                "if you trust the file"
            ) from None
        _warn_pickle(path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e2:  # noqa: BLE001
            raise InputError(f"cannot unpickle {path.name}: {first_line(e2)}") from None
    if isinstance(obj, nn.Module):
        return obj, None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if arch is None:
            raise InputError(
                f"{path.name} holds a state dict (weights only); pass its architecture with --arch "
                f"(built-in: {', '.join(ARCHS)}), --arch path/to/file.py:factory or --arch package.module:factory"
            )
        return _load_state(build_arch(arch), obj, path.name), arch
    raise InputError(f"{path.name} holds a {type(obj).__name__}, not a model or state dict")


def load_model(
    spec: str,
    *,
    arch: str | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    allow_pickle: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
    onnx_precision: str = "float32",
) -> LoadedModel:
    """A built-in model by name (trained and cached on first use) or a model file by path.

    `onnx_precision`: "float32" converts ONNX files to float32 modules (attacks, training);
    "file" keeps a float64 file's float64 weights (what `certify` bounds, with --spec or --data)."""
    path = Path(spec)
    if spec in ARCHS and not path.exists():
        from robustcli.zoo import builtin_model

        module = builtin_model(spec, progress=progress)
        loaded = LoadedModel(module, spec, arch=spec, dataset=ARCHS[spec].dataset)
    elif not path.exists():
        raise InputError(
            f"model {spec!r} is neither a built-in model (see `robust models`) nor an existing file"
        )
    elif path.is_dir():
        raise InputError(f"--model {spec} is a folder; pass a model file")
    elif not path.is_file():  # a FIFO would block the first read forever
        raise InputError(f"--model {spec} is not a regular file (a device, FIFO or socket); pass a model file")
    elif path.suffix == ".onnx" or path.name.endswith(".onnx.gz"):
        from robustcli.certify.onnx_import import onnx_to_torch

        conv = onnx_to_torch(path, dtype=None if onnx_precision == "file" else torch.float32)
        meta = {"format": "onnx", "input_shape": json.dumps(list(conv.input_shape)), "onnx_input": conv.input_name}
        loaded = LoadedModel(conv.module, spec, arch="onnx", meta=meta)
    elif path.suffix == ".safetensors":
        module, arch_name, meta = read_safetensors_model(path, arch)
        loaded = LoadedModel(module, spec, arch=arch_name, meta=meta)
    else:
        module, arch_name = read_torch_file(path, arch, allow_pickle)
        loaded = LoadedModel(module, spec, arch=arch_name)
    loaded.module = wrap_normalization(loaded.module, mean, std).to(device).eval()
    return loaded
