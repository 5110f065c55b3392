"""Inspecting a torch.export `.pt2` archive before `torch.export.load` touches it.

`torch.export.load` unpickles (`torch.load(weights_only=False)` or `pickle.loads`) in several
places: weights or constants whose payload config says `use_pickle: true`, opaque and custom-class
constants, legacy `.pt` weight files, the archive format of torch <= 2.7, and as a fallback when
the sample inputs do not load with `weights_only=True`. AOTInductor entries are native code. A
file that needs none of these is plain tensors plus a JSON graph; this module reads the zip
directory and the JSON configs (never a pickle) and lists every entry that would need one, so
the caller can refuse the file unless the user opted in to pickles.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import torch

# Entries of a tensors-only archive, relative to the archive's root folder.
_PLAIN = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/[^/]+\.json|extra/.+"
    r"|data/weights/[^/]+_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/[^/]+_constants_config\.json|data/constants/tensor_\d+"
    r"|data/sample_inputs/[^/]+\.pt"
)
_MAX_CONFIG_BYTES = 64 << 20  # a weights config is a few bytes per tensor


def pickled_entries(path: Path) -> list[str]:
    """Why loading `path` with torch.export.load would unpickle or run native code ([] if it would not).

    Raises ValueError when the file is not a readable zip archive.
    """
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"not a zip archive ({e})") from None
    with z:
        names = z.namelist()
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or any("/" not in n for n in names):
            return ["entries outside one archive folder (not a torch.export.save archive)"]
        root = roots.pop() + "/"
        rel = {n[len(root) :]: n for n in names}
        reasons = [f"{r} (not a tensor or JSON entry)" for r in rel if r and not r.endswith("/") and not _PLAIN.fullmatch(r)]
        if _read_small(z, rel.get("archive_format")) != b"pt2":
            reasons.append("no 'archive_format: pt2' entry (the old format is read by unpickling)")
        models = [r[len("models/") : -len(".json")] for r in rel if r.startswith("models/")]
        if not models:
            reasons.append("no models/*.json program")
        for model in models:
            for kind in ("weights", "constants"):
                cfg_name = f"data/{kind}/{model}_{kind}_config.json"
                reasons += _config_reasons(z, rel.get(cfg_name), cfg_name)
            sample = rel.get(f"data/sample_inputs/{model}.pt")
            if sample is not None and not _loads_without_pickle(z, sample):
                reasons.append(f"data/sample_inputs/{model}.pt (needs full unpickling)")
    return reasons


def _read_small(z: zipfile.ZipFile, name: str | None) -> bytes | None:
    if name is None or z.getinfo(name).file_size > _MAX_CONFIG_BYTES:
        return None
    return z.read(name).strip()


def _config_reasons(z: zipfile.ZipFile, name: str | None, label: str) -> list[str]:
    if name is None:
        return [f"{label} is missing"]
    raw = _read_small(z, name)
    try:
        config = json.loads(raw or b"")["config"]
        entries = list(config.items())
    except (ValueError, KeyError, TypeError, AttributeError):
        return [f"{label} is not a valid payload config"]
    reasons = []
    for fqn, meta in entries:
        if not isinstance(meta, dict):
            reasons.append(f"{label}: entry {fqn!r} is not a mapping")
        elif meta.get("use_pickle") is not False:
            reasons.append(f"{label}: {fqn!r} is stored as a pickle")
        elif not re.fullmatch(r"(weight|tensor)_\d+", str(meta.get("path_name", ""))):
            reasons.append(f"{label}: {fqn!r} is a {str(meta.get('path_name'))[:40]!r} object, not a tensor")
    return reasons


def _loads_without_pickle(z: zipfile.ZipFile, name: str) -> bool:
    if z.getinfo(name).file_size > _MAX_CONFIG_BYTES:
        return False
    try:
        torch.load(io.BytesIO(z.read(name)), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - anything weights_only refuses would make torch retry with pickle
        return False
    return True
