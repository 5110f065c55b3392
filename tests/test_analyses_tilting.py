"""Boundary tilting: the nearest-centroid reference, strength = 1/cos, the weight-decay trend."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from robustcli.analyses.tilting import (
    LinearClassifier,
    adversarial_strength,
    deviation_angle,
    local_tilting,
    nearest_centroid,
    signs,
    tilting_sweep,
)
from robustcli.data import load_dataset


def two_blobs(n=200, d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    t = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
    x[:, 0] += 2 * t
    return x.double(), t


def test_nearest_centroid_has_zero_angle_and_minimal_strength():
    x, t = two_blobs()
    nc = nearest_centroid(x, t)
    assert deviation_angle(nc.w, nc.w) == pytest.approx(0.0, abs=1e-9)
    assert adversarial_strength(nc, x, t) == pytest.approx(1.0, abs=1e-12)
    # every other direction is at least as strong (S = 1 / cos >= 1), and tilting raises strength
    g = torch.Generator().manual_seed(1)
    previous = 1.0
    for tilt in (0.2, 0.5, 1.0, 3.0):
        other = torch.zeros_like(nc.w)
        other[1] = 1.0
        c = LinearClassifier(nc.w + tilt * nc.w.norm() * other, nc.b)
        s = adversarial_strength(c, x, t)
        assert s > previous
        assert s == pytest.approx(1 / math.cos(math.radians(deviation_angle(c.w, nc.w))), rel=1e-9)
        previous = s
    for _ in range(5):
        c = LinearClassifier(torch.randn(x.shape[1], generator=g, dtype=torch.float64), 0.0)
        assert adversarial_strength(c, x, t) >= 1.0 or adversarial_strength(c, x, t) == math.inf


def test_local_tilting_of_a_linear_model_equals_its_global_angle():
    x, t = two_blobs()
    nc = nearest_centroid(x, t)
    model = nn.Linear(x.shape[1], 2).double()
    angle = deviation_angle(model.weight[1].detach() - model.weight[0].detach(), nc.w)
    local = local_tilting(model, x[:20], t[:20], 0, 1, nc.w)
    assert torch.allclose(local.angle_deg, torch.full((20,), angle, dtype=torch.float64), atol=1e-6)


@pytest.fixture(scope="module")
def digits_3_7():
    def pick(split):
        d = load_dataset("digits", split)
        keep = (d.y == 3) | (d.y == 7)
        return d.x[keep], signs(d.y[keep], 3, 7)

    return pick("train"), pick("test")


def test_weight_decay_sweep_shows_the_papers_trend(digits_3_7):
    (x_tr, t_tr), (x_te, t_te) = digits_3_7
    rows = tilting_sweep(x_tr, t_tr, x_te, t_te, [0.0, 1e-3, 1e-2, 1e-1], seed=0)
    nc, fits = rows[0], rows[1:]
    assert nc.angle_deg == pytest.approx(0.0, abs=1e-9) and nc.strength == pytest.approx(1.0, abs=1e-12)
    angles = [r.angle_deg for r in fits]
    strengths = [r.strength for r in fits]
    assert angles[0] > angles[-1] + 10  # stronger regularisation: smaller deviation angle
    assert all(a >= b for a, b in zip(angles, angles[1:]))
    assert all(a >= b for a, b in zip(strengths, strengths[1:]))  # and weaker adversarial examples
    for r in fits:
        assert r.strength == pytest.approx(1 / math.cos(math.radians(r.angle_deg)), rel=1e-6)
        assert r.test_accuracy > 0.9  # at similar accuracy
    assert fits[0].median_distance < fits[-1].median_distance


def test_analyze_tilting_command(run_cli, tmp_path):
    js, png = tmp_path / "t.json", tmp_path / "t.png"
    r = run_cli("analyze", "tilting", "--data", "digits", "--classes", "3", "7", "--weight-decay", "0", "1e-2", "1e-1",
                "--json", js, "--png", png)  # fmt: skip
    assert r.exit_code == 0, r.output
    report = json.loads(js.read_text())
    assert [row["weight_decay"] for row in report["rows"]] == [None, 0.0, 0.01, 0.1]
    assert png.stat().st_size > 10_000


def test_analyze_tilting_local_mode(run_cli, tmp_path):
    js = tmp_path / "t.json"
    r = run_cli("analyze", "tilting", "--model", "digits-mlp", "--data", "digits", "--classes", "3", "7", "--json", js)
    assert r.exit_code == 0, r.output
    report = json.loads(js.read_text())
    assert report["mode"] == "local" and 0 < report["angle_deg"]["median"] < 90


def test_analyze_tilting_bad_input(run_cli):
    r = run_cli("analyze", "tilting", "--data", "digits", "--classes", "3")
    assert r.exit_code == 2 and "two different" in r.stderr
    r = run_cli("analyze", "tilting", "--data", "digits", "--classes", "3", "12")
    assert r.exit_code == 2 and "class 12" in r.stderr
    r = run_cli("analyze", "tilting", "--model", "digits-mlp", "--data", "digits", "--weight-decay", "0.1")
    assert r.exit_code == 2


def test_tilting_config_runs(run_cli, tmp_path):
    r = run_cli("analyze", "tilting", "--config", "configs/analyze-tilting.yaml", "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    assert len(json.loads((tmp_path / "r.json").read_text())["rows"]) >= 3
