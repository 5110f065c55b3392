"""Built-in models carry their provenance, and `robust models` re-checks their weights."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file, save_file

from robustcli.commands.models import cached_provenance
from robustcli.data import load_dataset
from robustcli.zoo import RECIPES, builtin_path, dataset_sha256, weights_sha256


def test_builtin_records_data_torch_and_weights(digits_mlp, run_cli, tmp_path):
    out = tmp_path / "models.json"
    r = run_cli("models", "--json", out)
    assert r.exit_code == 0, r.output
    meta = json.loads(out.read_text())["models"]["digits-mlp"]
    assert meta["cached"] and meta["trained_on"] == "digits:train" and meta["torch"] == torch.__version__
    assert meta["data_sha256"] == dataset_sha256(load_dataset("digits", "train"))
    assert meta["weights_sha256"] == weights_sha256(load_file(str(builtin_path("digits-mlp"))))
    assert meta["weights_check"] == "ok" and int(meta["epochs"]) == RECIPES["digits-mlp"].epochs
    assert 0.8 < float(meta["test_accuracy"]) <= 1  # measured on the 360 test images at training time
    assert "digits-mlp" in r.stdout and meta["weights_sha256"][:8] in r.stdout


def test_changed_weights_are_flagged(digits_mlp, tmp_path):
    src = builtin_path("digits-mlp")
    copy = tmp_path / src.name
    shutil.copy(src, copy)
    assert cached_provenance(copy)["weights_check"] == "ok"
    from safetensors import safe_open

    with safe_open(str(copy), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(copy))
    first = sorted(state)[0]
    state[first] = state[first] + 1e-3
    save_file(state, str(copy), metadata=meta)
    assert cached_provenance(copy)["weights_check"] == "MISMATCH"
