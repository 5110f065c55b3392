"""`robust certify --model f.onnx --data d.npz`: a float64 ONNX file is certified with its own float64
weights, on float64 copies of the (float32) data points, never a float32-rounded copy of the file.

The two-class networks here have logits (relu(x) - relu(w x) + b, 0) on one input, with w = 1 +- 2^-28
and b = +-2^-29: w rounds to 1.0f, so the float32-rounded network's first logit is b everywhere while
the file's is (1 - w) x + b, whose sign changes inside the balls used below.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402
from vnncomp_lookalikes import save_graph, t  # noqa: E402

from robustcli.certify.bounders import METHODS  # noqa: E402
from robustcli.certify.lirpa import lirpa_available  # noqa: E402
from robustcli.certify.onnx_import import onnx_to_torch  # noqa: E402
from robustcli.certify.verify import certify_dataset  # noqa: E402

TINY = 2.0**-29
ALL = [m for m in METHODS if lirpa_available() or not METHODS[m].needs_lirpa]
# Every ReLU is active on the mirror's ball [0.75, 1], so every method with linear relaxations is
# exact there; IBP adds relu(x) and -relu(w x) as independent intervals and cannot prove 2^-30 > 0.
EXACT_THERE = [m for m in ALL if m not in ("ibp", "lirpa-ibp")]


def _two_class_net(path: Path, second_weight: float, bias: float, dtype=TensorProto.DOUBLE) -> Path:
    """Logits (relu(x) - relu(w x) + bias, 0) of one input, w = second_weight, in `dtype`."""
    np_dtype = np.float64 if dtype == TensorProto.DOUBLE else np.float32
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["z"], transB=1),
        helper.make_node("Relu", ["z"], ["h"]),
        helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], transB=1),
    ]
    inits = [t("w1", np.array([[1.0], [second_weight]], np_dtype)), t("b1", np.zeros(2, np_dtype)),
             t("w2", np.array([[1.0, -1.0], [0.0, 0.0]], np_dtype)), t("b2", np.array([bias, 0.0], np_dtype))]
    return save_graph(path, nodes, inits, (1, 1), (1, 2), dtype=dtype, in_name="x", out_name="y")


def _ort_logits(path: Path, x: float) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    return s.run(None, {"x": np.array([[x]], dtype=dtype)})[0].reshape(-1)


def _data(path: Path, x: float) -> Path:
    np.savez(path, x=np.array([[x]], np.float32), y=np.zeros(1, np.int64))
    return path


def _certify(run_cli, net: Path, data: Path, eps: float, methods: list[str], out: Path) -> dict:
    r = run_cli("certify", "--model", net, "--data", data, "--eps", eps, "--method", *methods, "--json", out)
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text())


@pytest.fixture()
def violated_in_float64(tmp_path) -> tuple[Path, Path]:
    """w = 1 + 2^-28, b = 2^-29 at x = 0.25 with eps 0.5: the file classifies x = 0.25 as class 0
    (margin 2^-30) but x = 0.75 as class 1 (margin -2^-30); the float32-rounded network's margin is
    2^-29 on the whole ball, so a bound of the rounded weights certifies the point."""
    net = _two_class_net(tmp_path / "neg.onnx", 1.0 + 2.0**-28, TINY)
    assert _ort_logits(net, 0.25).argmax() == 0 and _ort_logits(net, 0.75).argmax() == 1  # a real counterexample
    rounded = onnx_to_torch(net).module  # float32 (the conversion main's dataset path bounded)
    assert rounded(torch.tensor([[0.75]])).argmax(1).item() == 0
    return net, _data(tmp_path / "neg.npz", 0.25)


@pytest.fixture()
def holds_in_float64(tmp_path) -> tuple[Path, Path]:
    """The mirror: w = 1 - 2^-28, b = -2^-29 at x = 0.875 with eps 0.125: the file's margin is at least
    2^-30 on the whole ball [0.75, 1]; the float32-rounded network misclassifies the point (-2^-29)."""
    net = _two_class_net(tmp_path / "pos.onnx", 1.0 - 2.0**-28, -TINY)
    assert _ort_logits(net, 0.75)[0] > 0 and _ort_logits(net, 1.0)[0] > 0
    assert onnx_to_torch(net).module(torch.tensor([[0.875]])).argmax(1).item() == 1
    return net, _data(tmp_path / "pos.npz", 0.875)


@pytest.mark.parametrize("method", ALL)
def test_point_the_float64_file_misclassifies_in_its_ball_is_never_certified(violated_in_float64, tmp_path, run_cli,
                                                                           method):
    net, data = violated_in_float64
    report = _certify(run_cli, net, data, 0.5, [method], tmp_path / "out.json")
    (row,) = report["results"]
    assert report["clean_accuracy"] == 1.0 and report["model_dtype"] == "float64"
    assert row["verified_accuracy"] == 0.0, row
    assert row["mean_margin_lower_bound"] < 0, row  # of the float64 margin, whose minimum is -2^-30
    # PGD runs on the float64 model too: the counterexample exists only there, and PGD finds it
    assert row["pgd_accuracy"] == 0.0, row


def test_float64_margins_are_the_files_not_the_rounded_ones(violated_in_float64, tmp_path, run_cli):
    """CROWN is exact on this ball (ReLUs stable): its bound is the file's minimum margin -2^-30,
    where the rounded network's is +2^-29."""
    net, data = violated_in_float64
    report = _certify(run_cli, net, data, 0.5, ["crown", "alpha-crown"], tmp_path / "out.json")
    for row in report["results"]:
        assert row["mean_margin_lower_bound"] == pytest.approx(-(2.0**-30), rel=1e-6), row


@pytest.mark.parametrize("method", ALL)
def test_point_the_float64_file_holds_on_its_ball_is_certified(holds_in_float64, tmp_path, run_cli, method):
    net, data = holds_in_float64
    report = _certify(run_cli, net, data, 0.125, [method], tmp_path / "out.json")
    (row,) = report["results"]
    assert report["clean_accuracy"] == 1.0 and row["pgd_accuracy"] == 1.0, row
    if method in EXACT_THERE:
        assert row["verified_accuracy"] == 1.0, row
        assert row["mean_margin_lower_bound"] == pytest.approx(2.0**-30, rel=1e-6), row
    else:
        assert row["verified_accuracy"] == 0.0, row


def test_float32_file_is_certified_as_before(tmp_path, run_cli):
    """A float32 file stays a float32 model on float32 data: the CLI's numbers are those of
    certify_dataset on the default (float32) conversion."""
    net = _two_class_net(tmp_path / "f32.onnx", 0.5, 0.125, dtype=TensorProto.FLOAT)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (6, 1)).astype(np.float32)
    y = np.array([int(_ort_logits(net, float(v)).argmax()) for v in x[:, 0]], np.int64)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    methods = ["ibp", "crown"]
    report = _certify(run_cli, net, tmp_path / "d.npz", 0.05, methods, tmp_path / "out.json")
    assert report["model_dtype"] == "float32"
    module = onnx_to_torch(net).module.eval()
    assert all(p.dtype == torch.float32 for p in module.parameters())
    direct = certify_dataset(module, torch.from_numpy(x), torch.from_numpy(y), [0.05], methods, num_classes=2)
    assert [r["verified_accuracy"] for r in report["results"]] == [o.verified_accuracy for o in direct.outcomes]
    assert [r["mean_margin_lower_bound"] for r in report["results"]] == [o.mean_margin_lower for o in direct.outcomes]
    assert report["clean_accuracy"] == direct.clean_accuracy == 1.0


def _export(model: torch.nn.Module, path: Path, x: torch.Tensor) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), x[:1], str(path), dynamo=False, opset_version=13, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "b"}, "output": {0: "b"}})
    return path


# auto_LiRPA 0.3's alpha-CROWN fails on max pooling in float32 as in float64 (a shape error of its own)
_LIRPA_FAILS = {("maxpool", "lirpa-alpha-crown")}


@pytest.mark.parametrize("kind", ["sigmoid", "maxpool"])
def test_every_method_bounds_a_float64_file_as_its_float32_twin(tmp_path, kind):
    """The same weights (float32 numbers) in a float64 and a float32 file: every registered method runs
    on the float64 model (native engines, and auto_LiRPA with its sigmoid tables and pooling masks
    built in float64) and gives the float32 file's verdicts and margin bounds up to rounding."""
    import copy

    torch.manual_seed(0)
    if kind == "sigmoid":
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 12), torch.nn.Sigmoid(),
                                    torch.nn.Linear(12, 3))
    else:
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                    torch.nn.Flatten(), torch.nn.Linear(3, 3))
    x = torch.rand(6, 1, 4, 4)
    f64 = onnx_to_torch(_export(copy.deepcopy(model).double(), tmp_path / "f64.onnx", x.double()), dtype=None).module
    f32 = onnx_to_torch(_export(copy.deepcopy(model).float(), tmp_path / "f32.onnx", x)).module
    assert {p.dtype for p in f64.parameters()} == {torch.float64}
    assert {p.dtype for p in f32.parameters()} == {torch.float32}
    with torch.no_grad():
        y = f32(x).argmax(1)
    for method in ALL:
        if (kind, method) in _LIRPA_FAILS:
            continue
        a = certify_dataset(f64, x.double(), y, [0.02], [method], num_classes=3, pgd_steps=5).outcomes[0]
        b = certify_dataset(f32, x, y, [0.02], [method], num_classes=3, pgd_steps=5).outcomes[0]
        assert torch.equal(a.verified, b.verified), method
        assert torch.allclose(a.margin_lower.double(), b.margin_lower.double(), rtol=1e-4, atol=1e-6), method


def test_certify_dataset_refuses_float32_points_for_a_float64_model():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2)).double()
    with pytest.raises(ValueError, match="float64"):
        certify_dataset(model, torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), [0.1], ["ibp"], num_classes=2)


def test_float64_probability_outputs_and_html_report(tmp_path, run_cli):
    """A float64 file ending in a softmax: the CLI's log-probability wrapper, the softmax-head bounds
    and the HTML page all run on the float64 model."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3),
                                torch.nn.Softmax(dim=1)).double()
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    net = _export(model, tmp_path / "p.onnx", x)
    with torch.no_grad():
        y = model(x.float().double()).argmax(1)
    np.savez(tmp_path / "d.npz", x=x.float().numpy(), y=y.numpy())
    out = tmp_path / "out.json"
    r = run_cli("certify", "--model", net, "--data", tmp_path / "d.npz", "--eps", "0.01", "--method", "ibp", "crown",
                "--json", out, "--html", tmp_path / "r.html")
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["model_dtype"] == "float64" and report["clean_accuracy"] == 1.0
    assert all(row["verified_accuracy"] <= row["pgd_accuracy"] for row in report["results"])
    assert (tmp_path / "r.html").stat().st_size > 0


def test_randomized_smoothing_samples_the_float64_file(tmp_path, run_cli):
    """`--method smoothing` counts the predictions of the file itself: near x = 0.9 the float64 file
    says class 1 (the rounded network says class 0 everywhere), so the smoothed classifier predicts
    class 1 and the point labelled 0 is certified at no radius."""
    net = _two_class_net(tmp_path / "neg.onnx", 1.0 + 2.0**-28, TINY)
    assert _ort_logits(net, 0.9).argmax() == 1
    assert onnx_to_torch(net).module(torch.tensor([[0.9]])).argmax(1).item() == 0
    data = _data(tmp_path / "d.npz", 0.9)
    out = tmp_path / "out.json"
    r = run_cli("certify", "--model", net, "--data", data, "--method", "smoothing", "--sigma", "0.01",
                "--samples", "200", "--n0", "50", "--eps", "0", "--json", out)
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert report["model_dtype"] == "float64"
    assert row["points"][0]["predict_class"] == 1 and row["points"][0]["counts"] == [0, 200], row["points"]
    assert row["certified_accuracy"][0]["accuracy"] == 0.0


def test_mean_and_std_of_a_float64_model_are_float64(tmp_path):
    """--mean/--std around a float64 model are the given numbers in float64, not rounded to float32."""
    from robustcli.core.nn import Normalized
    from robustcli.models import load_model

    net = _two_class_net(tmp_path / "neg.onnx", 1.0 + 2.0**-28, TINY)
    wrapped = load_model(str(net), mean=[0.1307], std=[0.3081], onnx_precision="file").module
    assert isinstance(wrapped, Normalized)
    assert wrapped.mean.dtype == wrapped.std.dtype == torch.float64
    assert wrapped.mean.item() == 0.1307 and wrapped.std.item() == 0.3081
    rounded = load_model(str(net), mean=[0.1307], std=[0.3081]).module  # the float32 conversion: float32 as before
    assert rounded.mean.dtype == torch.float32 and all(p.dtype == torch.float32 for p in rounded.parameters())
