"""Scaling analysis: the first-order prediction is exact for a linear model; the command runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from robustcli.analyses.logit_gap import logit_gaps
from robustcli.analyses.scaling import log_grid, scaling_analysis
from robustcli.attacks.registry import make_attack


def linear_problem(n=400, d=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(d, 2)
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, d, generator=g))
        model.bias.zero_()
    # inputs in the middle of the box so that attacks with eps <= 0.25 are never clipped
    x = 0.3 + 0.4 * torch.rand(n, d, generator=g)
    y = model(x).argmax(1)
    return model, x, y


def test_first_order_prediction_is_exact_for_a_linear_model_under_fgsm():
    """For a linear 2-class model, Delta falls by exactly eps * ||w_y - w_other||_1 under FGSM."""
    model, x, y = linear_problem()
    eps = log_grid(1e-3, 0.25, 10)
    r = scaling_analysis(model, x, y, [make_attack("fgsm")], grids={"linf": eps}, device=torch.device("cpu"), resamples=50)
    (curve,) = r.curves
    assert np.abs(curve.err - curve.first_order).max() <= 1.0 / len(y) + 1e-12
    assert curve.err[-1] > 0.3  # the comparison is not vacuous


def test_gap_statistics():
    model, x, y = linear_problem(n=50)
    gaps = logit_gaps(model, x, y, ("linf", "l2"), device=torch.device("cpu"))
    assert gaps.correct.all()
    assert (gaps.gap > 0).all()
    w = model.weight.detach()
    expected = (w[0] - w[1]).abs().sum()
    assert torch.allclose(gaps.grad_norm["linf"], expected.expand(50), rtol=1e-5)
    assert torch.allclose(gaps.grad_norm["l2"], (w[0] - w[1]).norm().expand(50), rtol=1e-5)


def test_analyze_scaling_command(run_cli, tmp_path):
    js, png = tmp_path / "s.json", tmp_path / "s.png"
    r = run_cli("analyze", "scaling", "--model", "digits-mlp", "--n", "100", "--attack", "fgsm", "pgd", "--steps", "5",
                "--eps-min", "0.005", "--points", "8", "--resamples", "100", "--json", js, "--png", png)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "gamma" in r.stdout and "first order" in r.stdout
    report = json.loads(js.read_text())
    assert [c["attack"] for c in report["curves"]] == ["fgsm", "pgd", "worst-case"]
    fit = report["curves"][-1]["fit"]
    assert fit is not None and fit["gamma"] > 0 and 0 < fit["r2"] <= 1
    assert png.stat().st_size > 10_000


def test_analyze_scaling_bad_input(run_cli, tmp_path):
    r = run_cli("analyze", "scaling", "--model", "digits-mlp", "--eps-min", "0.5", "--eps-max", "0.1")
    assert r.exit_code == 2 and "eps" in r.stderr
    r = run_cli("analyze", "scaling", "--model", "digits-mlp", "--png", tmp_path / "x.jpg")
    assert r.exit_code == 2 and ".png" in r.stderr


@pytest.mark.parametrize("config", ["configs/analyze-scaling.yaml"])
def test_scaling_config_runs(run_cli, tmp_path, config):
    # flags override the config's values: a smaller run than the documented example
    r = run_cli("analyze", "scaling", "--config", config, "--n", "80", "--resamples", "100", "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "r.json").read_text())["curves"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_engines_run_on_cuda():
    from robustcli.analyses.tilting import tilting_sweep

    model, x, y = linear_problem(n=100)
    cpu = scaling_analysis(model, x, y, [make_attack("fgsm")], grids={"linf": log_grid(1e-3, 0.25, 6)}, device=torch.device("cpu"), resamples=20)
    dev = torch.device("cuda")
    gpu = scaling_analysis(model.to(dev), x, y, [make_attack("fgsm")], grids={"linf": log_grid(1e-3, 0.25, 6)}, device=dev, resamples=20)
    assert np.abs(gpu.curves[0].err - cpu.curves[0].err).max() <= 0.02
    t = torch.where(y == 1, 1.0, -1.0)
    rows = tilting_sweep(x.to(dev), t.to(dev), x.to(dev), t.to(dev), [0.0, 0.1], seed=0)
    assert rows[0].angle_deg == pytest.approx(0.0, abs=1e-9) and rows[1].angle_deg > rows[2].angle_deg
