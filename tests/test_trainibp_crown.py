"""CROWN-IBP in the training loss: sound, differentiable into the model, clean exit 2 without auto_LiRPA."""

from __future__ import annotations

import pytest
import torch

from robustcli.certify.lirpa import lirpa_available
from robustcli.certify.spec import margin_spec
from robustcli.commands.train_ibp import build_model


@pytest.mark.skipif(not lirpa_available(), reason="auto_LiRPA not installed")
def test_crown_ibp_training_bounds_are_sound_and_train_the_model():
    from robustcli.certify.crown_ibp_training import CrownIBPTrainingBounds

    torch.manual_seed(0)
    model = build_model("digits-mlp-bn", "digits", (), (), "ibp", seed=0).train()
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(1))
    bounds = CrownIBPTrainingBounds(model, x)
    running = model.model[2].running_mean.clone()
    spec = margin_spec(y, 10)
    lower = bounds(model, x, 0.05, "linf", spec)
    assert torch.equal(model.model[2].running_mean, running)  # auto_LiRPA's forward did not touch them
    # Sound: below the margins of the clean point and of random points in the ball (same BN batch stats).
    for k in range(3):
        delta = (torch.rand(x.shape, generator=torch.Generator().manual_seed(10 + k)) * 2 - 1) * 0.05
        xp = (x + delta).clamp(0, 1)
        with torch.no_grad():
            # batch statistics of the clean batch, as the bound assumes: bound the perturbed point's
            # logits through BN's affine map computed on x
            margins = torch.einsum("nsk,nk->ns", spec, _logits_with_clean_stats(model, x, xp))
        assert (lower <= margins + 1e-4).all()
    lower.sum().backward()
    assert model.model[1].weight.grad is not None and model.model[1].weight.grad.abs().sum() > 0


def _logits_with_clean_stats(model, x, xp):
    inner = model.model
    h, hp = (x - model.mean) / model.std, (xp - model.mean) / model.std
    h, hp = inner[0](h), inner[0](hp)
    h, hp = inner[1](h), inner[1](hp)
    mean, var = h.mean(0), h.var(0, unbiased=False)
    bn = inner[2]
    hp = (hp - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias
    return inner[4](inner[3](hp))


def test_crown_ibp_without_auto_lirpa_exits_2(run_cli, tmp_path, monkeypatch):
    import robustcli.certify.lirpa as lirpa

    def missing():
        raise ImportError("no auto_LiRPA")

    monkeypatch.setattr(lirpa, "import_auto_lirpa", missing)
    out = tmp_path / "m.safetensors"
    r = run_cli("train-ibp", "--data", "digits", "--eps", "0.1", "--out", out, "--method", "crown-ibp", "--epochs", "1")
    assert r.exit_code == 2
    assert "auto_LiRPA" in r.stderr and "--method ibp" in r.stderr and "Traceback" not in r.output
    assert not list(tmp_path.iterdir())
