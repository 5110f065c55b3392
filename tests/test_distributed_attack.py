"""Sharded `robust attack`: the points split across ranks by whole batches give, merged, exactly the
per-point results of one process; under torchrun only rank 0 prints and writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robustcli.attacks.evaluate import evaluate, merge_shards
from robustcli.attacks.fgsm import FGSM
from robustcli.attacks.pgd import PGDLinf
from robustcli.core import distributed

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("n", "batch", "world"), [(100, 16, 2), (100, 16, 3), (37, 8, 4), (5, 4, 3)])
def test_shards_cover_the_points_in_order_at_batch_boundaries(n, batch, world):
    parts = [distributed.shard(n, batch, rank_=r, world=world) for r in range(world)]
    assert parts[0].start == 0 and parts[-1].stop == n
    for a, b in zip(parts, parts[1:]):
        assert a.stop == b.start
    assert all(p.start % batch == 0 for p in parts)
    sizes = [p.stop - p.start for p in parts]
    assert max(sizes) - min(sizes) <= batch  # balanced to within one batch


def test_merged_shards_equal_one_evaluation_point_by_point(digits_mlp, digits_test):
    x, y = digits_test.x[:60], digits_test.y[:60]
    plan = [(PGDLinf(steps=3, restarts=2), [0.05, 0.1]), (FGSM(), [0.1])]
    kw = dict(device=torch.device("cpu"), batch_size=16, seed=4, keep_adversarials=True)
    whole = evaluate(digits_mlp, x, y, plan, **kw)
    shards = []
    for r in range(3):
        part = distributed.shard(len(y), 16, rank_=r, world=3)
        shards.append(evaluate(digits_mlp, x[part], y[part], plan, offset=part.start, **kw))
    merged = merge_shards(shards)
    assert torch.equal(merged.clean_correct, whole.clean_correct)
    assert len(merged.outcomes) == len(whole.outcomes) == 4  # 3 attack rows + worst case at 0.1
    for m, w in zip(merged.outcomes, whole.outcomes):
        assert (m.attack, m.norm, m.eps, m.attacked) == (w.attack, w.norm, w.eps, w.attacked)
        assert torch.equal(m.robust, w.robust) and torch.equal(m.broken, w.broken)
        assert torch.equal(torch.nan_to_num(m.perturbation, nan=-1), torch.nan_to_num(w.perturbation, nan=-1))
    assert merged.adversarials.keys() == whole.adversarials.keys()
    assert all(torch.equal(merged.adversarials[k], whole.adversarials[k]) for k in whole.adversarials)
    # the check can fail: without the offset, shards reuse the first batches' random starts
    unseeded = [
        evaluate(digits_mlp, x[p], y[p], plan, **kw)
        for p in (distributed.shard(len(y), 16, rank_=r, world=3) for r in range(3))
    ]
    key = "pgd/linf/0.1"
    assert not torch.equal(merge_shards(unseeded).adversarials[key], whole.adversarials[key])


def test_offset_must_be_a_batch_boundary(digits_mlp, digits_test):
    with pytest.raises(ValueError, match="multiple of batch_size"):
        evaluate(digits_mlp, digits_test.x[:8], digits_test.y[:8], [(FGSM(), [0.1])], device=torch.device("cpu"),
                 batch_size=4, offset=2)  # fmt: skip


def test_torchrun_two_ranks_write_the_single_process_report(digits_mlp, run_cli, tmp_path):
    # torchrun's own argument parser rejects `--n` (a prefix of its --nnodes, --nproc-per-node), so
    # the point count comes from a config file; see docs/distributed.md
    config = tmp_path / "attack.yaml"
    config.write_text("n: 60\n")
    args = ["attack", "--config", config, "--model", "digits-mlp", "--attack", "pgd", "fgsm", "--eps", "0.05", "0.1",
            "--steps", "5", "--restarts", "2", "--batch-size", "16", "--seed", "3"]  # fmt: skip
    single = run_cli(*args, "--json", tmp_path / "one.json", "--save-adv", tmp_path / "one.npz")
    assert single.exit_code == 0, single.output
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "robustcli",
           *map(str, args), "--json", str(tmp_path / "two.json"), "--save-adv", str(tmp_path / "two.npz")]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("Robustness of digits-mlp") == 1  # one table, from rank 0
    one, two = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    timing = {"time_s", "images_per_s"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in two["results"]] == [
        {k: v for k, v in r.items() if k not in timing} for r in one["results"]
    ]
    assert {k: v for k, v in two.items() if k != "results"} == {k: v for k, v in one.items() if k != "results"}
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)


def test_launcher_passes_robust_options_past_torchruns_parser():
    from robustcli.launch import parse

    args = parse(["--nnodes", "2", "--nproc-per-node", "8", "--", "attack", "--n", "500", "--start", "1"])
    assert (args.nnodes, args.nproc_per_node, args.module, args.training_script) == ("2", "8", True, "robustcli")
    assert args.training_script_args == ["attack", "--n", "500", "--start", "1"]
    with pytest.raises(SystemExit, match="put `--`"):
        parse(["--nproc-per-node", "2", "attack"])
