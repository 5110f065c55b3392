"""ONNX files whose weights live in a side file (`net.onnx` + `net.onnx.data`): what the default
`torch.onnx.export` (the dynamo exporter, torch >= 2.9) writes. The weights are read from the side
file next to the model; a missing side file is one clear error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")

from robustcli.certify.onnx_import import onnx_to_torch  # noqa: E402
from robustcli.core.errors import InputError  # noqa: E402


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_weights_in_a_side_file_are_read(tmp_path):
    model = _model()
    inline = tmp_path / "inline.onnx"
    torch.onnx.export(model, torch.zeros(1, 1, 8, 8), str(inline), dynamo=False)
    split = tmp_path / "split.onnx"
    onnx.save_model(onnx.load(str(inline)), str(split), save_as_external_data=True, location="split.onnx.data", size_threshold=0)
    assert (tmp_path / "split.onnx.data").stat().st_size > 64 * 16 * 4
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(onnx_to_torch(split).module(x), model(x), rtol=1e-4, atol=1e-5)
    (tmp_path / "split.onnx.data").unlink()
    with pytest.raises(InputError, match="split.onnx.data"):
        onnx_to_torch(split)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_default_torch_onnx_export_loads(tmp_path):
    """The exporter's default path needs `onnxscript` (in the `onnx` extra); ~15 s on a CPU."""
    pytest.importorskip("onnxscript")
    model = _model()
    path = tmp_path / "net.onnx"
    torch.onnx.export(model, torch.zeros(1, 1, 8, 8), str(path))
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(onnx_to_torch(path).module(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnxruntime_confirms_counterexamples_of_a_file_with_a_side_file(tmp_path):
    """The reference that confirms counterexamples runs the same file, side file included, and equals
    the model; a file onnxruntime cannot run is one clear error, not a traceback."""
    from robustcli.certify.onnx_check import onnxruntime_function

    model = _model()
    inline = tmp_path / "inline.onnx"
    torch.onnx.export(model, torch.zeros(1, 1, 8, 8), str(inline), dynamo=False)
    split = tmp_path / "split.onnx"
    onnx.save_model(onnx.load(str(inline)), str(split), save_as_external_data=True, location="split.onnx.data", size_threshold=0)
    x = torch.rand(3, 64)
    ref = onnxruntime_function(split, (1, 8, 8))(x)
    torch.testing.assert_close(ref, model(x.reshape(3, 1, 8, 8)).double(), rtol=1e-4, atol=1e-5)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07")  # a model proto with an IR version and no graph
    with pytest.raises(InputError, match="onnxruntime cannot run bad.onnx"):
        onnxruntime_function(bad, (1, 8, 8))
