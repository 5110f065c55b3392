"""`train`, `distill` and `train-moe` share `core.training_loop.train_loop`; on 2 CPU ranks (gloo) its
gradient averaging reproduces one process with the same global batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distributed_helpers import two_rank_results, two_rank_scenario
from robustcli.data import load_dataset

N_POINTS = 97  # the last global batch of 32 has 1 point: one rank gets a zero-weight stand-in


def _data():
    return load_dataset("digits", "train").head(N_POINTS)


def _natural_adversarial(seed: int) -> dict[str, torch.Tensor]:
    from robustcli.defenses.adversarial import AdversarialConfig, train_adversarial
    from robustcli.archs import build_arch

    torch.manual_seed(seed)
    model = build_arch("digits-mlp")
    d = _data()
    train_adversarial(model, d.x, d.y, AdversarialConfig(defense="natural", epochs=2, batch_size=32, seed=seed))
    return model.state_dict()


def _moe(mode: str, seed: int) -> dict[str, torch.Tensor]:
    from robustcli.defenses.advmoe import MoEConfig, train_moe
    from robustcli.defenses.moe import digits_moe_cnn

    torch.manual_seed(seed)
    model = digits_moe_cnn()
    d = _data()
    train_moe(model, d.x, d.y, MoEConfig(mode=mode, eps=0.1, epochs=1, batch_size=32, attack_steps=2, seed=seed))
    return model.state_dict()


@two_rank_scenario("defenses")
def _defenses_on_ranks(tmp: Path) -> dict:
    return {"natural": _natural_adversarial(1), "moe": _moe("natural", 2), "advmoe": _moe("advmoe", 3)}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    _, results = two_rank_results(tmp_path_factory)
    return [r["defenses"] for r in results]


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_shared_training_loop_on_two_ranks_matches_one_process(two_ranks):
    rank0, rank1 = two_ranks
    _assert_close(rank0["natural"], _natural_adversarial(1))
    _assert_close(rank1["natural"], rank0["natural"])


def test_moe_with_sparse_expert_gradients_matches_one_process(two_ranks):
    rank0, _ = two_ranks
    _assert_close(rank0["moe"], _moe("natural", 2))


def test_advmoe_two_optimisers_keep_ranks_identical(two_ranks):
    # random attack starts differ from one process (drawn per rank), so only rank agreement is exact
    rank0, rank1 = two_ranks
    _assert_close(rank0["advmoe"], rank1["advmoe"])
    assert all(torch.isfinite(v.float()).all() for v in rank0["advmoe"].values())
