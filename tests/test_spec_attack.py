"""The specification attack: which disjuncts get the targeted cross-entropy, and what it finds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import robustcli.certify.spec_attack as sa
from robustcli.certify.onnx_import import onnx_to_torch
from robustcli.certify.vnnlib import parse_vnnlib, read_vnnlib

MNISTFC = Path(__file__).resolve().parents[2] / "shared" / "vnncomp2021-mnistfc"


def test_targets_only_for_one_margin_of_two_outputs():
    C = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [2.0, -1.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 0.0, 1.0]])
    rows = [slice(0, 1), slice(1, 3), slice(2, 3), slice(3, 4), slice(4, 5)]
    assert sa._targets(C, rows).tolist() == [1, -1, -1, -1, 0]


def test_unconditional_property_is_violated_anywhere():
    prop = parse_vnnlib("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 0))\n(assert (<= X_0 1))\n")
    model = torch.nn.Sequential(torch.nn.Linear(1, 1))
    assert len(sa.spec_pgd(model, prop.cases[0], (1,), steps=2, restarts=2)) > 0


@pytest.mark.skipif(not MNISTFC.is_dir(), reason="VNN-COMP 2021 mnistfc is not beside the checkout (../shared)")
def test_cross_entropy_starts_find_what_the_margin_misses(monkeypatch):
    model = onnx_to_torch(MNISTFC / "mnist-net_256x4.onnx")
    case = read_vnnlib(MNISTFC / "prop_1_0.05.vnnlib").cases[0]  # violated (VNN-COMP 2021 ground truth)

    def run() -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return sa.spec_pgd(model.module.eval(), case, model.input_shape, steps=50, restarts=10, generator=g)

    found = run()
    assert len(found) > 0
    x = found[0]
    assert bool(((x >= case.lower.float()) & (x <= case.upper.float())).all())
    y = model.module(x.reshape(1, *model.input_shape)).reshape(1, -1).double()
    assert bool(case.violated_by(y).all())
    monkeypatch.setattr(sa, "_targets", lambda C, rows: torch.full((len(rows),), -1, dtype=torch.long))
    assert len(run()) == 0  # the margin alone: the same budget finds nothing
