"""Compatibility shim that lets auto_LiRPA 0.3 (the only PyPI release) run on torch 2.x and numpy 2.

auto-lirpa 0.3 was written for torch < 1.13 and numpy 1. Four things it uses are gone:
1. `numpy.lib.arraysetops` (numpy 2 made it private): a stand-in module exposing numpy's set ops;
2. `torch.onnx.symbolic_helper._set_opset_version`: a replacement that sets the exporter's opset;
3. `torch._C.Node.__getitem__` (node attributes by name, `n['value']`): re-added via `kindOf`;
4. `BoundedModule._named_members` overrides a torch method that now also receives
   `remove_duplicate`: wrapped so the extra keyword is accepted (0.3 always de-duplicates).

`import_auto_lirpa()` applies 1-3 before importing and 4 after, only when the installed
distribution is version 0.3; a newer auto_LiRPA is imported untouched. Each patch is applied only
if the attribute is really missing, so the shim is idempotent and never overrides torch or numpy.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
import warnings
from importlib import metadata
from typing import Any

PATCHED_VERSION = "0.3"


def installed_version() -> str | None:
    try:
        return metadata.version("auto-LiRPA")
    except metadata.PackageNotFoundError:
        return None


def _numpy_arraysetops() -> None:
    try:
        importlib.import_module("numpy.lib.arraysetops")
        return
    except ImportError:
        pass
    import numpy as np

    mod = types.ModuleType("numpy.lib.arraysetops")
    for name in ("isin", "in1d", "unique", "intersect1d", "union1d", "setdiff1d", "setxor1d", "ediff1d"):
        if hasattr(np, name):
            setattr(mod, name, getattr(np, name))
    sys.modules["numpy.lib.arraysetops"] = mod


def _onnx_opset_setter() -> None:
    import torch.onnx.symbolic_helper as helper

    if hasattr(helper, "_set_opset_version"):
        return

    def _set_opset_version(version: int) -> None:
        for path in ("torch.onnx._internal.torchscript_exporter._globals", "torch.onnx._globals"):
            try:
                importlib.import_module(path).GLOBALS.export_onnx_opset_version = version
                return
            except (ImportError, AttributeError):
                continue

    helper._set_opset_version = _set_opset_version


def _node_getitem() -> None:
    import torch

    if hasattr(torch._C.Node, "__getitem__"):
        return

    def __getitem__(self: Any, key: str) -> Any:
        # torch < 1.13 defined this in torch.onnx.utils: dispatch on the attribute's kind ('t', 'i', 'f', ...).
        return getattr(self, self.kindOf(key))(key)

    torch._C.Node.__getitem__ = __getitem__


def _named_members_keyword(bounded_module_cls: type) -> None:
    original = bounded_module_cls._named_members
    if getattr(original, "_robustcli_patched", False):
        return

    def _named_members(self, get_members_fn, prefix="", recurse=True, remove_duplicate: bool = True, **kwargs):
        return original(self, get_members_fn, prefix, recurse)

    _named_members._robustcli_patched = True  # type: ignore[attr-defined]
    bounded_module_cls._named_members = _named_members


def _import_keeping_process_state() -> types.ModuleType:
    """Import auto_LiRPA without letting it change the process's warnings and logging.

    It calls `warnings.simplefilter("once")` on import, which would show every warning in the process
    (torch's TorchScript deprecation on each certify run): the filters are restored after the import,
    the import's own deprecation warnings dropped and any other warning passed on."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module("auto_LiRPA")
    for w in caught:
        if not issubclass(w.category, DeprecationWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    # Its utils also call logging.basicConfig(stream=sys.stdout), which would route every log record
    # of the process to stdout (where `--json -` writes), and log a failure before raising it: the
    # failure reaches the user as this tool's one-line error, so its own records are dropped.
    for h in root.handlers:
        if h not in handlers:
            root.removeHandler(h)
    logging.getLogger("auto_LiRPA.utils").setLevel(logging.CRITICAL + 1)
    return module


def import_auto_lirpa() -> types.ModuleType:
    """Import auto_LiRPA, patching around version 0.3's incompatibilities first. Raises ImportError."""
    version = installed_version()
    if version != PATCHED_VERSION:
        return _import_keeping_process_state()
    _numpy_arraysetops()
    _onnx_opset_setter()
    _node_getitem()
    module = _import_keeping_process_state()
    _named_members_keyword(module.BoundedModule)
    from auto_LiRPA.bound_multi_gpu import BoundDataParallel

    _named_members_keyword(BoundDataParallel)
    return module
