"""A classifier that ends in log_softmax (PyTorch's MNIST example does) certifies: margins between
classes of log_softmax(z) are those of z, so its bounds are the logits' bounds, exactly."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustcli.certify.bounders import InputSet, build_bounder
from robustcli.certify.spec import margin_spec
from robustcli.core.errors import InputError


class ExampleNet(nn.Module):
    """PyTorch's MNIST example network, shrunk to 8x8 inputs: functional ReLUs, max pooling,
    dropout, flatten and a final F.log_softmax."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, 1), nn.Conv2d(4, 8, 3, 1)
        self.dropout = nn.Dropout(0.25)
        self.fc1, self.fc2 = nn.Linear(8 * 2 * 2, 16), nn.Linear(16, 10)

    def logits(self, x):
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(self.dropout(x), 1))))

    def forward(self, x):
        return F.log_softmax(self.logits(x), dim=1)


class Logits(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.logits(x)


def _net():
    torch.manual_seed(0)
    return ExampleNet().eval()


@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
@pytest.mark.parametrize("form", ["functional", "sequential"])
def test_log_softmax_head_bounds_equal_the_logits_bounds_and_hold(method, form):
    torch.manual_seed(1)
    if form == "functional":
        net = _net()
        model, logits = net, Logits(net)
    else:
        logits = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
        model = nn.Sequential(logits, nn.LogSoftmax(dim=1)).eval()
    x = torch.rand(4, 1, 8, 8)
    spec = margin_spec(torch.tensor([0, 3, 5, 9]), 10)
    s = InputSet.ball(x, 0.05, "linf")
    low = build_bounder(method, model, x[:2], alpha_iterations=5).lower(s, spec)
    ref = build_bounder(method, logits, x[:2], alpha_iterations=5).lower(s, spec)
    torch.testing.assert_close(low, ref, atol=1e-6, rtol=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        pts = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * 0.05).clamp(0, 1)
        with torch.no_grad():
            margins = torch.einsum("nsk,nk->ns", spec, model(pts))
        assert bool((low <= margins + 1e-5).all())


def test_rows_that_do_not_sum_to_zero_are_refused():
    net = _net()
    x = torch.rand(2, 1, 8, 8)
    C = torch.zeros(2, 1, 10)
    C[:, 0, 3] = 1.0  # log p_3 alone: log-sum-exp does not cancel
    with pytest.raises(InputError, match="rows sum to zero"):
        build_bounder("crown", net, x).lower(InputSet.ball(x, 0.01, "linf"), C)


def test_example_network_certifies_from_its_files_at_the_cli(tmp_path, run_cli):
    net = _net()
    x = torch.rand(2, 1, 8, 8)
    batch = torch.export.Dim("batch", min=2)
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes=({0: batch},)), str(tmp_path / "m.pt2"))
    torch.jit.save(torch.jit.trace(net, x), str(tmp_path / "m.ts"))
    files = ["m.pt2", "m.ts"]
    try:
        torch.onnx.export(net, (x,), str(tmp_path / "m.onnx"), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
        files.append("m.onnx")
    except ImportError:
        pass
    margins = {}
    for f in files:
        r = run_cli("certify", "--model", tmp_path / f, "--data", "digits", "--n", "6", "--eps", "0.01",
                    "--method", "ibp", "crown", "--pgd-steps", "2", "--json", tmp_path / f"{f}.json")
        assert r.exit_code == 0, f"{f}: {r.output}"
        margins[f] = [row["mean_margin_lower_bound"] for row in json.loads((tmp_path / f"{f}.json").read_text())["results"]]
    for f, m in margins.items():
        assert m == pytest.approx(margins["m.pt2"], abs=1e-4), f
