"""DDP training on 2 CPU ranks (gloo) reproduces one process with the same global batch; checkpoints
are written by rank 0 and resume on any number of ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from distributed_helpers import fit, fit_owned_step, tiny_mlp, two_rank_results, two_rank_scenario
from robustcli.data import Dataset, load_dataset
from robustcli.core.ddp import GradientSync, local_batch, to_sync_batchnorm
from robustcli.training import train_natural

N_POINTS = 301  # odd: the last global batch splits unevenly across 2 ranks
EPOCHS = 2


def _data() -> Dataset:
    return load_dataset("digits", "train").head(N_POINTS)


def _natural(seed: int) -> dict[str, torch.Tensor]:
    model = tiny_mlp(seed)
    train_natural(model, _data(), epochs=EPOCHS, seed=seed, batch_size=64)
    return model.state_dict()


def _ibp(seed: int) -> dict[str, torch.Tensor]:
    """`train-ibp`'s engine, vanilla recipe (no BatchNorm), eps ramped over the second epoch."""
    from robustcli.certify.training import recipe_config, train_ibp

    model = tiny_mlp(seed)
    config = recipe_config("vanilla", 0.05, 2, warmup=1, lr_milestones=(), batch_size=64, seed=seed)
    d = _data()
    train_ibp(model, d.x, d.y, config)
    return model.state_dict()


def _prepare_one_process_checkpoint(tmp: Path) -> None:
    d = _data()
    fit(tiny_mlp(2), d.x, d.y, epochs=1, out=tmp / "one.safetensors", resume=False)  # 1 process, epoch 0


@two_rank_scenario("natural")
def _natural_on_ranks(tmp: Path) -> dict:
    return _natural(seed=1)


@two_rank_scenario("fresh")
def _fit_on_ranks(tmp: Path) -> dict:
    d = _data()
    return fit(tiny_mlp(2), d.x, d.y, epochs=EPOCHS, out=tmp / "two.safetensors", resume=False)


@two_rank_scenario("resumed", prepare=_prepare_one_process_checkpoint)
def _resume_on_ranks(tmp: Path) -> dict:
    """Resume on 2 ranks from the checkpoint one process wrote (epoch 0 done)."""
    d = _data()
    return fit(tiny_mlp(99), d.x, d.y, epochs=3, out=tmp / "one.safetensors", resume=True)


@two_rank_scenario("ibp")
def _ibp_on_ranks(tmp: Path) -> dict:
    return _ibp(seed=6)


@two_rank_scenario("owned")
def _owned_on_ranks(tmp: Path) -> dict:
    d = _data()
    return fit_owned_step(tiny_mlp(4 + torch.distributed.get_rank()), d.x, d.y, epochs=EPOCHS)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return two_rank_results(tmp_path_factory)


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_two_rank_natural_training_matches_one_process(two_ranks):
    _, (rank0, rank1) = two_ranks
    single = _natural(seed=1)
    _assert_close(rank0["natural"], single)
    _assert_close(rank1["natural"], single)  # every rank holds the same weights
    # the comparison can fail: a different seed moves the weights far beyond the tolerance
    other = _natural(seed=3)
    assert max((other[k] - single[k]).abs().max().item() for k in single) > 1e-2


def test_two_rank_fit_matches_one_process_and_rank0_writes(two_ranks):
    tmp, (rank0, _) = two_ranks
    d = _data()
    single = fit(tiny_mlp(2), d.x, d.y, epochs=EPOCHS, out=tmp / "single.safetensors", resume=False)
    _assert_close(rank0["fresh"], single)
    # one log line per epoch (rank 0 only), describing the global batch
    two_log = [json.loads(line) for line in (tmp / "two.log.jsonl").read_text().splitlines()]
    one_log = [json.loads(line) for line in (tmp / "single.log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in two_log] == list(range(EPOCHS))
    assert [r["seen"] for r in two_log] == [N_POINTS] * EPOCHS
    for a, b in zip(two_log, one_log):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_checkpoints_resume_across_world_sizes(two_ranks):
    tmp, (rank0, _) = two_ranks
    d = _data()
    # 1 process -> 2 ranks: epoch 0 on one process, epochs 1-2 on two ranks == 3 epochs on one process
    straight = fit(tiny_mlp(2), d.x, d.y, epochs=3, out=tmp / "straight.safetensors", resume=False)
    _assert_close(rank0["resumed"], straight)
    # 2 ranks -> 1 process: the 2-rank checkpoint (2 epochs) resumed here for a third
    resumed_here = fit(tiny_mlp(7), d.x, d.y, epochs=3, out=tmp / "two.safetensors", resume=True)
    _assert_close(resumed_here, straight)


def test_local_batches_cover_the_global_batch_with_exact_weights():
    idx = torch.arange(10, 15)  # 5 points over 2 ranks: 3 + 2
    parts = [local_batch(idx, rank=r, world=2) for r in range(2)]
    assert torch.equal(torch.cat([p.index for p in parts]), idx)
    assert [p.weight for p in parts] == [3 * 2 / 5, 2 * 2 / 5]
    # mean of (weight x local mean) over ranks == the global mean, which DDP's averaging relies on
    losses = torch.rand(15)
    local = [p.weight * losses[p.index].mean() for p in parts]
    assert torch.stack(local).mean().item() == pytest.approx(losses[idx].mean().item())
    # a global batch smaller than the world: the extra rank gets a stand-in point with weight 0
    few = [local_batch(torch.tensor([4]), rank=r, world=2) for r in range(2)]
    assert few[0].points == 1 and few[1].points == 0 and few[1].weight == 0


def test_sync_batchnorm_conversion_round_trips():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    model(torch.rand(8, 1, 8, 8))  # some running statistics
    model.eval()
    x = torch.rand(5, 1, 8, 8)
    before = model(x)
    parallel = GradientSync(model, [])  # one process: no conversion
    assert model(x).equal(before)
    parallel._reverts = to_sync_batchnorm(model)  # what a CUDA rank does
    assert isinstance(model[1], nn.SyncBatchNorm)
    assert model(x).equal(before)  # eval mode: the same affine map from the running statistics
    restored = parallel.finish()
    assert type(restored[1]) is nn.BatchNorm2d and restored(x).equal(before)


def test_gradient_sync_for_steps_that_own_the_optimiser_matches_one_process(two_ranks):
    _, (rank0, rank1) = two_ranks
    d = _data()
    single = fit_owned_step(tiny_mlp(4), d.x, d.y, epochs=EPOCHS)
    # rank 1 started from other weights (seed 5): GradientSync broadcasts rank 0's first
    _assert_close(rank0["owned"]["state"], single["state"])
    _assert_close(rank1["owned"]["state"], single["state"])
    assert rank0["owned"]["loss"] == pytest.approx(single["loss"], rel=1e-5)


def test_two_rank_ibp_training_matches_one_process(two_ranks):
    _, (rank0, _) = two_ranks
    _assert_close(rank0["ibp"], _ibp(seed=6))
