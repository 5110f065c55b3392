"""The sample files in examples/ that the README and docs use: they load in every format robust
reads, agree with each other, the VNNLIB properties describe the box they claim, the VNN-COMP
benchmark runs, and the README's export snippet works as written."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch

from doc_commands import ROOT

EX = ROOT / "examples"


def _load(name: str, **kw):
    from robustcli.models import load_model

    return load_model(str(EX / name), progress=False, **kw).module


@pytest.fixture(scope="module")
def points():
    data = np.load(EX / "digits-test.npz")
    return torch.from_numpy(data["x"]), torch.from_numpy(data["y"])


def test_every_format_holds_the_same_network(points, monkeypatch):
    monkeypatch.syspath_prepend(str(EX))
    x, y = points
    assert x.shape == (100, 1, 8, 8) and y.shape == (100,)
    reference = _load("digits-mlp.pt2")(x)
    assert (reference.argmax(1) == y).float().mean() > 0.9
    for name, kw in (("digits-mlp.onnx", {}), ("digits-mlp.safetensors", {"arch": "my_model:make_net"})):
        torch.testing.assert_close(_load(name, **kw)(x), reference, rtol=1e-4, atol=1e-4)
    sys.modules.pop("my_model", None)  # imported from examples/ for --arch; not for later tests


def test_pt2_loads_without_pickles():
    from robustcli.pt2_archive import pickled_entries

    assert pickled_entries(EX / "digits-mlp.pt2") == []


@pytest.mark.parametrize("name, eps", [("prop.vnnlib", 0.03), ("prop_wide.vnnlib", 0.2)])
def test_property_is_the_box_around_test_point_0(points, name, eps):
    x, y = points
    text = (EX / name).read_text()
    upper = {int(i): float(v) for i, v in re.findall(r"\(assert \(<= X_(\d+) ([-0-9.e]+)\)\)", text)}
    lower = {int(i): float(v) for i, v in re.findall(r"\(assert \(>= X_(\d+) ([-0-9.e]+)\)\)", text)}
    flat = x[0].flatten()
    assert len(upper) == len(lower) == 64
    for i in range(64):
        assert upper[i] == pytest.approx(min(flat[i].item() + eps, 1.0), abs=1e-6)
        assert lower[i] == pytest.approx(max(flat[i].item() - eps, 0.0), abs=1e-6)
    assert f"Y_{int(y[0])}))" in text


def test_vnncomp_benchmark_runs(run_cli, tmp_path):
    out = tmp_path / "results.csv"
    r = run_cli("vnncomp", EX / "instances.csv", "--timeout", "60", "--out", out)
    assert r.exit_code == 0, r.output
    verdicts = [line.split(",")[4] for line in out.read_text().splitlines()]
    assert verdicts == ["holds", "violated"]


def test_readme_export_snippet_runs(tmp_path, monkeypatch):
    """The README's `python` block, with a model of the shape it exports."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Your own model", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    exec(snippet, {"torch": torch, "model": model})  # noqa: S102 - the project's own README
    from robustcli.models import load_model

    x = torch.rand(5, 1, 28, 28)
    loaded = load_model(str(tmp_path / "net.pt2"), progress=False).module
    torch.testing.assert_close(loaded(x), model(x))
