"""`robust vnncomp` keeps what it has: lines written as decided, failures as `error`, timeouts kept."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from onnx_helpers import helper, mlp_onnx, save, tensor, vnnlib_box

pytest.importorskip("onnxruntime")

from robustcli.certify.onnx_import import onnx_to_torch  # noqa: E402
from robustcli.certify.spec_verify import verify_property  # noqa: E402
from robustcli.certify.vnnlib import parse_vnnlib  # noqa: E402


def _hard_net_and_spec(tmp_path, n_in: int = 6, width: int = 48, big: float = 20.0):
    """A net whose outputs are Y_0 = a.relu(z) - a.relu(-z) = a.z and Y_1 = a.relu(z + B) - B sum(a) - 0.05
    = a.z - 0.05 for z = W x (z + B > 0 on the box), so Y_0 - Y_1 = 0.05 everywhere (up to rounding).
    The violation `Y_0 <= Y_1` never happens: the property holds and no attack can violate it, yet
    every relu(+-z) is unstable, so a ReLU-split proof needs about 2^width domains."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((width, n_in)) / np.sqrt(n_in)).astype(np.float32)
    a = rng.standard_normal(width).astype(np.float32)
    w1 = np.concatenate([w, -w, w])
    b1 = np.concatenate([np.zeros(2 * width), np.full(width, big)]).astype(np.float32)
    w2 = np.zeros((2, 3 * width), np.float32)
    w2[0, :width], w2[0, width:2 * width], w2[1, 2 * width:] = a, -a, a
    w1, b1, w2 = w1.astype(np.float32), b1.astype(np.float32), w2.astype(np.float32)
    b2 = np.array([0.0, -big * a.sum() - 0.05], np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["z"], transB=1), helper.make_node("Relu", ["z"], ["h"]),
             helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], transB=1)]
    net = save(tmp_path / "hard.onnx", nodes, [tensor("w1", w1), tensor("b1", b1), tensor("w2", w2), tensor("b2", b2)],
               (1, n_in), (1, 2))
    spec = tmp_path / "hard.vnnlib"
    spec.write_text(vnnlib_box([-1.0] * n_in, [1.0] * n_in, 0, 2, extra_outputs="(assert (<= Y_0 Y_1))"))
    return net, spec


@pytest.mark.parametrize("timeout", [1.0, 2.5])
def test_small_timeout_answers_timeout_in_time(tmp_path, timeout):
    net, spec = _hard_net_and_spec(tmp_path)
    conv = onnx_to_torch(net)
    t0 = time.monotonic()
    res = verify_property(conv.module, parse_vnnlib(spec.read_text()), conv.input_shape, timeout=timeout)
    wall = time.monotonic() - t0
    assert res.status == "timeout", res.stages
    assert wall <= timeout + max(1.0, 0.05 * timeout), (wall, res.stages)


def test_vnncomp_appends_lines_records_errors_and_refuses_bad_timeouts(tmp_path, run_cli):
    net = mlp_onnx(tmp_path / "net.onnx")
    hard, hard_spec = _hard_net_and_spec(tmp_path)
    ok = tmp_path / "ok.vnnlib"
    ok.write_text(vnnlib_box([0.0] * 12, [1e-3] * 12, 0, 3, extra_outputs="(assert (<= Y_0 -1000000.0))"))
    bad = tmp_path / "wrong_size.vnnlib"  # 6 inputs for a 12-input network: this instance fails, the run goes on
    bad.write_text(vnnlib_box([0.0] * 6, [1.0] * 6, 0, 3))
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx file")
    (tmp_path / "instances.csv").write_text(
        f"net.onnx,ok.vnnlib,5\nnet.onnx,{bad.name},5\nbroken.onnx,ok.vnnlib,5\n{hard.name},{hard_spec.name},1\n")
    out = tmp_path / "results.csv"
    t0 = time.monotonic()
    r = run_cli("vnncomp", tmp_path / "instances.csv", "--out", out)
    assert r.exit_code == 0, r.output
    lines = [ln.split(",") for ln in out.read_text().splitlines()]
    assert [ln[4] for ln in lines] == ["holds", "error", "error", "timeout"], r.stderr
    assert "6 inputs" in r.stderr and "broken.onnx" in r.stderr
    assert float(lines[3][5]) <= 1.0 + 1.0
    assert time.monotonic() - t0 < 60
    # negative, zero, NaN and infinite timeouts are refused before anything runs or is written
    for t in ("-5", "0", "nan", "inf"):
        (tmp_path / "neg.csv").write_text(f"net.onnx,ok.vnnlib,{t}\n")
        r = run_cli("vnncomp", tmp_path / "neg.csv", "--out", tmp_path / "neg_out.csv")
        assert r.exit_code == 2 and "positive number of seconds" in r.stderr and len(r.stderr.splitlines()) == 1
        assert not (tmp_path / "neg_out.csv").exists()
    # a binary file or a NUL byte in the CSV: one line, nothing written
    for name, data in (("bin.csv", bytes(range(256)) * 4), ("nul.csv", b"net.onnx,ok.vnnlib,5\n\x00,a,b\n")):
        (tmp_path / name).write_bytes(data)
        r = run_cli("vnncomp", tmp_path / name, "--out", tmp_path / "bin_out.csv")
        assert r.exit_code == 2 and name in r.stderr and len(r.stderr.splitlines()) == 1, r.output
        assert "Traceback" not in r.output and not (tmp_path / "bin_out.csv").exists()


def test_result_line_is_on_disk_before_the_next_instance_starts(tmp_path, monkeypatch):
    from robustcli.certify import vnncomp

    net = mlp_onnx(tmp_path / "net.onnx")
    ok = tmp_path / "ok.vnnlib"
    ok.write_text(vnnlib_box([0.0] * 12, [1e-3] * 12, 0, 3, extra_outputs="(assert (<= Y_0 -1000000.0))"))
    (tmp_path / "instances.csv").write_text("net.onnx,ok.vnnlib,5\nnet.onnx,ok.vnnlib,5\n")
    out = tmp_path / "results.csv"
    seen: list[int] = []
    real = vnncomp.run_instance

    def spy(inst, **kw):
        seen.append(len(out.read_text().splitlines()) if out.exists() else -1)
        if len(seen) == 2:
            raise KeyboardInterrupt  # the user presses Ctrl-C during the second instance
        return real(inst, **kw)

    monkeypatch.setattr(vnncomp, "run_instance", spy)
    from click.testing import CliRunner

    from robustcli.cli import cli

    CliRunner().invoke(cli, ["vnncomp", str(tmp_path / "instances.csv"), "--out", str(out)])
    assert seen == [0, 1]  # the first line was written before the second instance began
    assert out.read_text().splitlines()[0].split(",")[4] == "holds"


@pytest.mark.slow
def test_jobs_run_in_parallel_processes_with_the_same_answers(tmp_path, run_cli):
    net = mlp_onnx(tmp_path / "net.onnx")
    ok = tmp_path / "ok.vnnlib"
    ok.write_text(vnnlib_box([0.0] * 12, [1e-3] * 12, 0, 3, extra_outputs="(assert (<= Y_0 -1000000.0))"))
    (tmp_path / "instances.csv").write_text("net.onnx,ok.vnnlib,20\n" * 3)
    out = tmp_path / "results.csv"
    r = run_cli("vnncomp", tmp_path / "instances.csv", "--out", out, "--jobs", "2")
    assert r.exit_code == 0, r.output
    assert [ln.split(",")[4] for ln in out.read_text().splitlines()] == ["holds"] * 3
    assert run_cli("vnncomp", tmp_path / "instances.csv", "--jobs", "0").exit_code == 2


def test_vnncomp_2022_words_and_run_instance_results_file(tmp_path, run_cli):
    """VNN-COMP 2022+ names answers by the VNNLIB formula: `unsat` (holds) and `sat` (violated), and a
    run_instance.sh results file holds the word, then a sat answer's witness."""
    from robustcli.certify.vnncomp import read_counterexample

    mlp_onnx(tmp_path / "net.onnx")
    never = tmp_path / "never.vnnlib"  # Y_0 <= -1e6 on a tiny box: no input violates (holds)
    never.write_text(vnnlib_box([0.0] * 12, [1e-3] * 12, 0, 3, extra_outputs="(assert (<= Y_0 -1000000.0))"))
    always = tmp_path / "always.vnnlib"  # Y_0 <= 1e6: every input violates
    always.write_text(vnnlib_box([0.0] * 12, [1e-3] * 12, 0, 3, extra_outputs="(assert (<= Y_0 1000000.0))"))
    (tmp_path / "instances.csv").write_text("net.onnx,never.vnnlib,5\nnet.onnx,always.vnnlib,5\n")
    out = tmp_path / "results.csv"
    r = run_cli("vnncomp", tmp_path / "instances.csv", "--out", out, "--result-words", "2022")
    assert r.exit_code == 0, r.output
    assert [ln.split(",")[4] for ln in out.read_text().splitlines()] == ["unsat", "sat"]

    for spec, word in ((never, "unsat"), (always, "sat")):
        res = tmp_path / f"{spec.stem}.result"
        r = run_cli("certify", "--model", tmp_path / "net.onnx", "--spec", spec, "--timeout", "5",
                    "--result-file", res, "--counterexample", tmp_path / f"{spec.stem}.counterexample")
        assert r.exit_code == 0, r.output
        first, *rest = res.read_text().splitlines()
        assert first == word
        assert rest == [] if word == "unsat" else rest[0].startswith("((X_0 ")
    witness = tmp_path / "witness.txt"
    witness.write_text("\n".join(res.read_text().splitlines()[1:]))
    x, y = read_counterexample(witness)
    assert len(x) == 12 and len(y) == 3 and bool(((x >= 0) & (x <= 1e-3)).all()) and float(y[0]) <= 1e6
    r = run_cli("certify", "--model", tmp_path / "net.onnx", "--result-file", tmp_path / "r.txt")
    assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1 and "--result-file" in r.stderr
    assert not (tmp_path / "r.txt").exists()
