"""`robust certify --method smoothing` end to end on the built-in digits MLP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import only_error_line
from distributed_helpers import two_rank_results, two_rank_scenario


def test_smoothing_table_json_and_png(run_cli, tmp_path, digits_mlp):
    out, png = tmp_path / "cert.json", tmp_path / "cert.png"
    r = run_cli("certify", "--model", "digits-mlp", "--n", "30", "--method", "smoothing", "--sigma", "0.25", "0.5",
                "--samples", "300", "--n0", "30", "--alpha", "0.01", "--eps", "0", "0.25", "0.5",
                "--batch-size", "2048", "--json", out, "--png", png)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "SMOOTHED classifier" in r.stdout and "median r" in r.stdout
    report = json.loads(out.read_text())
    assert report["method"] == "smoothing" and report["norm"] == "l2" and report["samples"] == 300
    assert [row["sigma"] for row in report["results"]] == [0.25, 0.5]
    for row in report["results"]:
        acc = [c["accuracy"] for c in row["certified_accuracy"]]
        assert [c["radius"] for c in row["certified_accuracy"]] == [0, 0.25, 0.5]
        assert acc == sorted(acc, reverse=True) and acc[0] > 0.5  # a trained MLP: most points certify at r=0
        assert len(row["points"]) == 30
        for p in row["points"]:
            assert sum(p["counts"]) == 300 and sum(p["selection_counts"]) == 30
            assert (p["class"] is None) == (p["radius"] == 0)
        certified = [p for p in row["points"] if p["class"] == p["label"]]
        assert acc[0] == pytest.approx(len(certified) / 30)
        assert 0 <= row["abstention_rate"] <= 1 and row["time_s"] > 0
    assert not any("base" in k for k in report["results"][0])  # g's numbers only
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_smoothing_is_seeded(run_cli, tmp_path, digits_mlp):
    reports = []
    for name in ("a.json", "b.json"):
        r = run_cli("certify", "--model", "digits-mlp", "--n", "5", "--method", "smoothing", "--sigma", "0.5",
                    "--samples", "200", "--n0", "20", "--seed", "3", "--json", tmp_path / name)  # fmt: skip
        assert r.exit_code == 0, r.output
        reports.append(json.loads((tmp_path / name).read_text())["results"][0]["points"])
    assert reports[0] == reports[1]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--sigma", "0"], "--sigma must be > 0"),
        (["--sigma", "-0.25"], "--sigma must be > 0"),
        (["--sigma", "0.25", "--alpha", "0"], "--alpha"),
        (["--sigma", "0.25", "--alpha", "1.5"], "--alpha"),
        (["--sigma", "0.25", "--samples", "50", "--n0", "100"], "--n0"),
        (["--sigma", "0.25", "--norm", "linf"], "L2"),
        ([], "needs --sigma"),
        (["--sigma", "0.25", "--method", "ibp"], "on its own"),
        (["--sigma", "0.25", "--eps", "-1"], "radii"),
        (["--sigma", "0.25", "--png", "x.jpg"], ".png"),
    ],
)
def test_smoothing_bad_input_one_line(run_cli, tmp_path, args, words):
    out = tmp_path / "x.json"
    r = run_cli("certify", "--model", "digits-mlp", "--n", "5", "--method", "smoothing", *args, "--json", out)
    assert words in only_error_line(r)
    assert not out.exists()


def test_smoothing_options_need_the_method(run_cli, tmp_path):
    r = run_cli("certify", "--model", "digits-mlp", "--n", "5", "--sigma", "0.25")
    assert "--method smoothing" in only_error_line(r)


SMOOTHING_EVAL = """\
model: digits-mlp
n: 20
checks:
  - name: smoothed
    type: smoothing
    sigma: {sigma}
    eps: [0.0, 0.25]
    samples: 300
    n0: 30
    alpha: 0.01
    gates:
      - certified_accuracy >= {threshold} at eps=0.25
      - smoothed_clean_accuracy >= 0.5
      - abstention_rate <= 0.5
"""


def test_eval_smoothing_check_gates_on_certified_accuracy(run_cli, tmp_path, digits_mlp):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(SMOOTHING_EVAL.format(sigma=0.25, threshold=0.0))
    r = run_cli("eval", cfg, "--json", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["clean_accuracy"] is None  # g's accuracy is never reported as the model's
    gates = report["checks"][0]["gates"]
    cert, clean, _ = (g["value"] for g in gates)
    assert 0 < cert <= clean <= 1  # certified at r > 0 implies correct under CERTIFY; PREDICT agrees here
    cfg.write_text(SMOOTHING_EVAL.format(sigma=0.25, threshold=1.01))  # impossible: the gate must fail
    r = run_cli("eval", cfg)
    assert r.exit_code == 1, r.output
    cfg.write_text(SMOOTHING_EVAL.format(sigma=0, threshold=0.0))
    r = run_cli("eval", cfg)
    assert r.exit_code == 2 and "s.yaml:" in r.stderr and "sigma" in r.stderr, r.output


def test_smoothing_config_runs(run_cli, tmp_path, digits_mlp):
    # The shipped config with the model swapped for the fast digits one (flags override the file).
    r = run_cli("certify", "--config", "configs/certify-smoothing.yaml", "--model", "digits-mlp", "--data", "digits",
                "--n", "5", "--samples", "200", "--json", tmp_path / "c.json")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert [row["sigma"] for row in json.loads((tmp_path / "c.json").read_text())["results"]] == [0.25, 0.5]


SMOOTHING_ARGS = ["certify", "--model", "digits-mlp", "--n", "9", "--method", "smoothing", "--sigma", "0.25",
                  "--samples", "200", "--n0", "20", "--batch-size", "400", "--seed", "4"]  # fmt: skip


@two_rank_scenario("smoothing-cli")
def _smoothing_on_ranks(tmp: Path) -> None:
    """The CLI in each of 2 processes joined as torchrun would join them."""
    from robustcli.cli import cli

    cli.main(args=[*SMOOTHING_ARGS, "--json", str(tmp / "smoothing-two.json")], prog_name="robust", standalone_mode=False)


def test_two_rank_smoothing_writes_the_single_process_report(digits_mlp, run_cli, tmp_path_factory):
    """Blocks of points draw from generators seeded by their first index, so splitting the points
    across ranks changes nothing: rank 0 writes the same per-point certificates as one process."""
    tmp, _ = two_rank_results(tmp_path_factory)
    single = run_cli(*SMOOTHING_ARGS, "--json", tmp / "smoothing-one.json")
    assert single.exit_code == 0, single.output
    one = json.loads((tmp / "smoothing-one.json").read_text())["results"][0]
    two = json.loads((tmp / "smoothing-two.json").read_text())["results"][0]
    assert len(two["points"]) == 9 and two["points"] == one["points"]
    assert two["certified_accuracy"] == one["certified_accuracy"]
