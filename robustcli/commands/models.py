"""`robust models`: the built-in models, their training recipe and, once cached, their provenance."""

from __future__ import annotations

from pathlib import Path

import click

from robustcli.archs import ARCHS
from robustcli.data import DESCRIPTIONS
from robustcli.options import RobustCommand, json_option
from robustcli.report import print_table, write_json
from robustcli.zoo import RECIPES, builtin_path, weights_sha256


def cached_provenance(path: Path) -> dict[str, str] | None:
    """The metadata a cached built-in carries, with `weights_check` = ok / MISMATCH (the weights'
    sha256 recomputed from the file), or None when not cached. Header-only reads stay cheap."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from robustcli.models import META_PREFIX

    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        state = load_file(str(path))
    except Exception:  # noqa: BLE001 - a damaged cache file is reported, not raised
        return {"weights_check": "unreadable"}
    meta = {k[len(META_PREFIX) :]: v for k, v in raw.items() if k.startswith(META_PREFIX)}
    recorded = meta.get("weights_sha256")
    meta["weights_check"] = "-" if recorded is None else ("ok" if weights_sha256(state) == recorded else "MISMATCH")
    return meta


@click.command("models", cls=RobustCommand)
@json_option
def command(json_path) -> None:
    """List built-in models: trained with a fixed seed on first use, then cached.

    Cached ones show their provenance: test accuracy, torch version, the sha256 of the training
    data and of the weights (re-computed from the file: ok / MISMATCH).
    """
    rows, report, data_hashes, torches = [], {}, {}, set()
    short = lambda v: v[:8] if v else "-"  # noqa: E731
    for name, spec in ARCHS.items():
        meta = cached_provenance(builtin_path(name))
        recipe = RECIPES[name].describe()
        if meta is None:
            rows.append([name, f"{spec.dataset}:train", recipe, "-", "-", "not cached"])
        else:
            acc = meta.get("test_accuracy")
            trained_on = meta.get("trained_on", spec.dataset)
            data_hashes[trained_on] = short(meta.get("data_sha256"))
            torches.add(meta.get("torch", "?"))
            rows.append([
                name, trained_on, recipe, f"{float(acc):.2%}" if acc else "-", meta.get("torch", "-"),
                f"{short(meta.get('weights_sha256'))} {meta['weights_check']}",
            ])  # fmt: skip
        report[name] = {"architecture": spec.description, "dataset": spec.dataset, "recipe": recipe,
                        "path": str(builtin_path(name)), "cached": meta is not None, **(meta or {})}  # fmt: skip
    caption = [f"cache {builtin_path('x').parent}; not cached: trained on first use (seed 0)"]
    if data_hashes:
        caption.append("training data sha256: " + ", ".join(f"{k} {v}" for k, v in data_hashes.items()))
    caption.append("; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items()))
    caption.append("architectures: robust models --json")
    print_table(
        "Built-in models",
        ["name", "trained on", "recipe", "test acc", "torch", "weights sha256"],
        rows,
        caption="\n".join(caption),
    )
    if json_path:
        write_json(json_path, {"command": "models", "models": report})
