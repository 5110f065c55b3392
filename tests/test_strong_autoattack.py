"""Cross-check against torchattacks' AutoAttack ("standard", Linf) on a trained mnist-cnn (slow)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchattacks")


@pytest.mark.slow
def test_strong_suite_no_weaker_than_autoattack():
    import torchattacks

    from robustcli.attacks.evaluate import WORST_CASE, predict
    from robustcli.attacks.suite import run_strong_suite
    from robustcli.data import load_dataset
    from robustcli.models import load_model

    model = load_model("mnist-cnn", progress=False).module.eval()
    data = load_dataset("mnist", "test").head(100)
    x, y, eps = data.x, data.y, 0.1
    ev = run_strong_suite(model, x, y, [eps], device=torch.device("cpu"), batch_size=100)
    ours = next(o for o in ev.outcomes if o.attack == WORST_CASE).robust_accuracy
    x_adv = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)(x, y)
    assert (x_adv - x).abs().max() <= eps + 1e-5
    clean = predict(model, x, 100, torch.device("cpu")) == y
    theirs = ((predict(model, x_adv, 100, torch.device("cpu")) == y) & clean).float().mean().item()
    assert ours <= theirs + 0.01, (ours, theirs)
