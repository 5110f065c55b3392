"""`robust attack --suite strong --suite-norm l2`: the four AutoAttack attacks in L2."""

from __future__ import annotations

import json


def test_suite_strong_in_l2(run_cli, tmp_path, digits_mlp):
    out = tmp_path / "r.json"
    r = run_cli("attack", "--model", "digits-mlp", "--suite", "strong", "--suite-norm", "l2", "--eps-l2", "0.5",
                "1.0", "--n", "30", "--steps", "10", "--queries", "50", "--json", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["suite_norm"] == "l2"
    rows = [(row["attack"], row["norm"], row["eps"]) for row in report["results"]]
    names = ["apgd-ce-l2", "apgd-t-l2", "fab-t-l2", "square-l2"]
    assert rows == [(a, "l2", e) for a in names for e in (0.5, 1.0)] + [("worst-case", "l2", e) for e in (0.5, 1.0)]
    worst = {row["eps"]: row["robust_accuracy"] for row in report["results"] if row["attack"] == "worst-case"}
    assert worst[1.0] <= worst[0.5] < report["clean_accuracy"]
