"""Sharded `robust certify`: shards of whole batches merged equal one process point by point, and
on 2 ranks rank 0 writes the single-process report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustcli.certify.verify import CertifyOutcome, certify_dataset, merge_shards
from distributed_helpers import two_rank_results, two_rank_scenario
from robustcli.core import distributed


def test_merged_certify_shards_equal_one_run_point_by_point(digits_mlp, digits_test):
    x, y = digits_test.x[:24], digits_test.y[:24]
    methods = ["ibp"]  # the bounds are per point; PGD is the part that depends on batch seeds
    kw = dict(num_classes=10, batch_size=8, seed=2, pgd_steps=5, pgd_restarts=2, device=torch.device("cpu"))
    whole = certify_dataset(digits_mlp, x, y, [0.01, 0.05], methods, **kw)
    shards = []
    for r in range(3):
        part = distributed.shard(len(y), 8, rank_=r, world=3)
        shards.append(certify_dataset(digits_mlp, x[part], y[part], [0.01, 0.05], methods, offset=part.start, **kw))
    merged = merge_shards(shards)
    assert merged.clean_accuracy == whole.clean_accuracy
    assert len(merged.outcomes) == len(whole.outcomes) == 2 * len(methods)
    for m, w in zip(merged.outcomes, whole.outcomes):
        assert (m.method, m.norm, m.eps) == (w.method, w.norm, w.eps)
        for f in CertifyOutcome.PER_POINT:
            assert torch.equal(getattr(m, f), getattr(w, f)), (m.method, m.eps, f)
    # the comparison can fail: PGD breaks some points, so its per-point result depends on the seeds
    assert any((w.correct & ~w.pgd_robust).any() for w in whole.outcomes)


CERTIFY_ARGS = ["certify", "--model", "digits-mlp", "--n", "40", "--eps", "0.01", "0.05", "--method", "ibp",
                "--pgd-steps", "5", "--batch-size", "8", "--seed", "1"]  # fmt: skip


@two_rank_scenario("certify-cli")
def _certify_on_ranks(tmp: Path) -> None:
    """The CLI in each of 2 processes joined as torchrun would join them."""
    from robustcli.cli import cli

    cli.main(args=[*CERTIFY_ARGS, "--json", str(tmp / "certify-two.json")], prog_name="robust", standalone_mode=False)


def test_two_rank_certify_cli_writes_the_single_process_report(digits_mlp, run_cli, tmp_path_factory):
    tmp, _ = two_rank_results(tmp_path_factory)
    single = run_cli(*CERTIFY_ARGS, "--json", tmp / "certify-one.json")
    assert single.exit_code == 0, single.output
    one = json.loads((tmp / "certify-one.json").read_text())
    two = json.loads((tmp / "certify-two.json").read_text())
    timing = {"time_s", "points_per_s"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in two["results"]] == [
        {k: v for k, v in r.items() if k not in timing} for r in one["results"]
    ]
    assert {k: v for k, v in two.items() if k not in ("results", "pgd")} == {
        k: v for k, v in one.items() if k not in ("results", "pgd")
    }


def test_certify_offset_must_be_a_batch_boundary(digits_mlp, digits_test):
    with pytest.raises(ValueError, match="multiple of batch_size"):
        certify_dataset(digits_mlp, digits_test.x[:4], digits_test.y[:4], [0.01], ["ibp"], num_classes=10,
                        batch_size=4, offset=2)  # fmt: skip
