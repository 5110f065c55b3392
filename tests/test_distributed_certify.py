"""Sharded `robust certify`: shards of whole batches merged equal one process point by point, and
under torchrun rank 0 writes the single-process report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from certify.lirpa import lirpa_available
from certify.verify import CertifyOutcome, certify_dataset, merge_shards
from robustcli import distributed

ROOT = Path(__file__).resolve().parents[1]


def test_merged_certify_shards_equal_one_run_point_by_point(digits_mlp, digits_test):
    x, y = digits_test.x[:50], digits_test.y[:50]
    methods = ["ibp", "crown-ibp"] if lirpa_available() else ["ibp"]
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


def test_torchrun_two_ranks_certify_like_one_process(digits_mlp, run_cli, tmp_path):
    config = tmp_path / "certify.yaml"
    config.write_text("n: 40\n")  # torchrun's parser rejects a bare `--n`; see docs/distributed.md
    args = ["certify", "--config", config, "--model", "digits-mlp", "--eps", "0.01", "0.05", "--method", "ibp",
            "--pgd-steps", "5", "--batch-size", "8", "--seed", "1"]  # fmt: skip
    single = run_cli(*args, "--json", tmp_path / "one.json")
    assert single.exit_code == 0, single.output
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "robustcli",
           *map(str, args), "--json", str(tmp_path / "two.json")]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("Certified robustness of digits-mlp") == 1
    one, two = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
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
