"""Running an ONNX file with onnxruntime, the reference that confirms counterexamples."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from robustcli.core.errors import InputError


ONNXRUNTIME_INPUT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


def onnxruntime_function(path: str | Path, input_shape: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    """f(x) for x (B, n_inputs) float32: the file's outputs (B, n_outputs) computed by onnxruntime,
    one point at a time (VNN-COMP files often fix the batch to 1), in the input type the file declares
    (float64 models exist; onnxruntime refuses a float32 array for a double input)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError("confirming counterexamples with onnxruntime needs it installed: pip install onnxruntime") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: its warnings about a file's layout are not the user's concern here
    from robustcli.certify.onnx_import import load_onnx, onnx_bytes
    from robustcli.core.errors import first_line

    path = Path(path)
    model = onnx_bytes(path)
    if _has_external_data(model):
        # Weights in a side file (`net.onnx.data`, torch.onnx.export's default): onnxruntime resolves
        # it next to the file; an in-memory copy is made only for a gzipped file.
        model = str(path) if path.suffix != ".gz" else load_onnx(path).SerializeToString()
    try:
        session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own error types for files it cannot run
        raise InputError(f"onnxruntime cannot run {path.name} to confirm counterexamples: {first_line(e)}") from None
    name = session.get_inputs()[0].name
    dtype = ONNXRUNTIME_INPUT_TYPES.get(session.get_inputs()[0].type)
    if dtype is None:
        raise InputError(f"{path.name} takes a {session.get_inputs()[0].type} input; a classifier's input is float, "
                         "double or float16")

    def run(x: torch.Tensor) -> torch.Tensor:
        rows = []
        for xi in x.detach().cpu().to(torch.float32).numpy():
            out = session.run(None, {name: xi.reshape(1, *input_shape).astype(dtype)})[0]
            rows.append(torch.from_numpy(np.asarray(out, dtype=np.float64).reshape(-1)))
        return torch.stack(rows)

    return run


def _has_external_data(data: bytes) -> bool:
    import onnx

    model = onnx.load_model_from_string(data)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
