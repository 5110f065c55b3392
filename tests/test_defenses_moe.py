"""MoE-CNN and AdvMoE: routing, sparse compute, parameter groups, an end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustcli.defenses.advmoe import MoEConfig, expert_step, optimizers_for, router_step, train_moe
from robustcli.defenses.moe import MoEConv2d, digits_moe_cnn, expert_parameters, macs_per_input, moe_layers, router_parameters
from robustcli.archs import build_arch
from robustcli.core.checkpoint import Checkpointer
from robustcli.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train")


def test_router_picks_exactly_k_experts_per_input():
    torch.manual_seed(0)
    layer = MoEConv2d(3, 12, 3, 1, 1, experts=6, top_k=2)
    out = layer(torch.rand(20, 3, 8, 8))
    assert out.shape == (20, 12, 8, 8)
    assert (layer.selected.sum(1) == 2).all()
    # Unselected experts' channels are exactly zero; selected ones are not.
    per_expert = out.abs().flatten(2).sum(2).view(20, 6, 2).sum(2) > 0
    assert torch.equal(per_expert, layer.selected)
    assert torch.allclose(layer.routing.exp().sum(1), torch.ones(20))


def test_unselected_experts_are_not_computed_and_get_no_gradient():
    torch.manual_seed(0)
    model = digits_moe_cnn(experts=4, top_k=1)
    layer = moe_layers(model)[0]
    calls = [0] * 4
    for e, conv in enumerate(layer.experts):
        conv.register_forward_hook(lambda m, i, o, e=e: calls.__setitem__(e, calls[e] + len(o)))
    x = torch.rand(1, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        model(x)
    chosen = layer.selected[0].nonzero().squeeze(1).tolist()
    assert len(chosen) == 1 and calls == [1 if e in chosen else 0 for e in range(4)]
    # A training step on that one input: only the chosen expert's weights get a gradient.
    model.train()
    torch.nn.functional.cross_entropy(model(x), torch.tensor([3])).backward()
    for e, conv in enumerate(layer.experts):
        assert (conv.weight.grad is not None) == (e in chosen)
    # Inference cost counts only what ran: 1 of 4 experts in the conv layer.
    dense = build_arch("digits-cnn")
    assert macs_per_input(model, x) < macs_per_input(dense, x)


def test_alternating_steps_update_only_their_own_parameter_group(digits):
    torch.manual_seed(0)
    model = digits_moe_cnn()
    opts = optimizers_for(model, MoEConfig(mode="advmoe"))
    x, y = digits.x[:32], digits.y[:32]
    gen = torch.Generator().manual_seed(0)

    def snapshot(params):
        return [p.detach().clone() for p in params]

    experts, routers = snapshot(expert_parameters(model)), snapshot(router_parameters(model))
    expert_step(model, opts["experts"], x, y, eps=0.2, steps=2, beta=6.0, generator=gen)
    assert all(torch.equal(a, b) for a, b in zip(routers, router_parameters(model)))
    assert any(not torch.equal(a, b) for a, b in zip(experts, expert_parameters(model)))
    experts = snapshot(expert_parameters(model))
    router_step(model, opts["routers"], x, y, eps=0.2, steps=2, beta=6.0, alpha=6.0, generator=gen)
    assert all(torch.equal(a, b) for a, b in zip(experts, expert_parameters(model)))
    assert any(not torch.equal(a, b) for a, b in zip(routers, router_parameters(model)))


def test_advmoe_resume_gives_identical_weights(tmp_path, digits):
    x, y = digits.x[:64], digits.y[:64]
    cfg = MoEConfig(mode="advmoe", eps=0.2, epochs=2, batch_size=32, seed=1)
    torch.manual_seed(0)
    reference = digits_moe_cnn()
    train_moe(reference, x, y, cfg)

    class Killed(Exception):
        pass

    def kill(record):
        raise Killed

    ckpt = Checkpointer(tmp_path / "m.safetensors")
    torch.manual_seed(0)
    with pytest.raises(Killed):
        train_moe(digits_moe_cnn(), x, y, cfg, checkpointer=ckpt, on_epoch=kill)
    resumed = digits_moe_cnn()
    train_moe(resumed, x, y, cfg, checkpointer=ckpt, resume=True)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_train_moe_cli_end_to_end(run_cli, tmp_path):
    out = tmp_path / "moe.safetensors"
    r = run_cli(
        "train-moe", "--config", str(ROOT / "configs" / "train-moe-mnist.yaml"), "--data", "digits", "--eps", "0.2",
        "--epochs", "2", "--warmup", "1", "--train-n", "96", "--batch-size", "32", "--eval-n", "20", "--eval-steps", "3",
        "--out", str(out), "--json", str(tmp_path / "m.json"),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "m.json").read_text())
    names = [m["model"] for m in report["models"]]
    assert names == ["advmoe", "at", "dense-at"]
    ratios = {m["model"]: m["macs_ratio_vs_dense"] for m in report["models"]}
    assert ratios["dense-at"] == 1.0 and ratios["advmoe"] < 1.0 and ratios["at"] < 1.0
    for m in report["models"]:
        assert 0 <= m["pgd_accuracy"] <= m["clean_accuracy"] <= 1
        assert Path(m["out"]).exists()
    # The saved MoE loads again by its arch name and can be attacked.
    r = run_cli("attack", "--model", str(tmp_path / "moe.advmoe.safetensors"), "--data", "digits", "--n", "20",
                "--eps", "0.2", "--steps", "5")  # fmt: skip
    assert r.exit_code == 0, r.output
    r = run_cli("train-moe", "--data", "digits", "--experts", "3", "--out", str(out))
    assert r.exit_code == 2 and "--experts 3" in r.output
