"""`robust vnncomp` end to end on look-alikes of VNN-COMP categories (tests/vnncomp_lookalikes.py).

Each category's instances have known answers (a Lipschitz-proved `holds`, a `violated` built from a
point); the run must write one competition-format row per instance, never contradict a known answer,
confirm every counterexample with onnxruntime, and answer within the timeout. Instances without a
known answer (larger boxes: they may run to their timeout) are in the slow test.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

import vnncomp_lookalikes as V  # noqa: E402
from onnx_helpers import helper, save, tensor  # noqa: E402

from robustcli.certify.chain_bounds import Chain, crown_spec, ibp_spec  # noqa: E402
from robustcli.certify.onnx_import import onnx_to_torch  # noqa: E402
from robustcli.certify.onnx_layers import Permute  # noqa: E402


def _run(run_cli, tmp_path, category: str, known_only: bool):
    items = V.build(category, tmp_path / category)
    if known_only:
        items = [it for it in items if it.expected is not None]
    inst = tmp_path / category / "run.csv"
    with inst.open("w", newline="") as f:
        csv.writer(f).writerows([it.network.name, it.property.name, f"{it.timeout:g}"] for it in items)
    out = tmp_path / category / "results.csv"
    r = run_cli("vnncomp", inst, "--out", out)
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    return items, out, [row for row in csv.reader(out.open()) if row]


@pytest.mark.parametrize("category", sorted(set(V.CATEGORIES) - set(V.UNKNOWN_ONLY)))
def test_lookalike_category_known_answers(tmp_path, run_cli, category):
    items, out, rows = _run(run_cli, tmp_path, category, known_only=True)
    assert V.judge(items, out, tmp_path / category / "results_counterexamples") == []
    got = {r[2][2:]: r[4] for r in rows}
    for it in items:  # the known answers are easy (a wide margin, a point that violates): all decided
        assert got[it.property.name] == it.expected, (it.property.name, got[it.property.name])
    assert all(r[0] == category for r in rows)  # benchmark column: the instances folder's name


def test_branch_and_bound_finds_the_second_box_counterexample(tmp_path, run_cli):
    """Without the attack stage, branch and bound must answer a property with two input boxes whose
    first is narrower than float32's spacing there (a float64 candidate rounds out of it, so it is
    not confirmed) and whose second holds a counterexample: the candidate is moved into the box
    and the second box is still searched (`violated`, confirmed), never `unknown`."""
    items = [it for it in V.build("acasxu", tmp_path / "acasxu") if it.property.stem.endswith("twoboxes_violated")]
    assert items
    inst = tmp_path / "acasxu" / "run.csv"
    inst.write_text("".join(f"{it.network.name},{it.property.name},{it.timeout:g}\n" for it in items))
    out = tmp_path / "acasxu" / "results.csv"
    r = run_cli("vnncomp", inst, "--out", out, "--method", "crown", "alpha-crown", "bab")
    assert r.exit_code == 0, r.output
    assert V.judge(items, out, tmp_path / "acasxu" / "results_counterexamples") == []
    assert [row[4] for row in csv.reader(out.open()) if row] == ["violated"] * len(items)


@pytest.mark.slow
@pytest.mark.parametrize("category", sorted(V.CATEGORIES))
def test_lookalike_category_all_instances_sound(tmp_path, run_cli, category):
    items, out, rows = _run(run_cli, tmp_path, category, known_only=False)
    assert V.judge(items, out, tmp_path / category / "results_counterexamples") == []
    assert "error" not in [r[4] for r in rows]


def test_transpose_of_the_input_bounds_like_the_folded_network(tmp_path):
    """An NHWC input transposed to NCHW before a convolution (tf2onnx's idiom) converts to a Permute
    layer; IBP and CROWN through it give the bounds of the same network fed NCHW directly."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float32)
    w2 = (rng.standard_normal((5, 4 * 6 * 6)) * 0.1).astype(np.float32)
    body = [helper.make_node("Conv", ["nchw", "w1"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Flatten", ["r"], ["f"], axis=1), helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    inits = [tensor("w1", w1), tensor("w2", w2)]
    nhwc = save(tmp_path / "nhwc.onnx", [helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2])] + body,
                inits, (1, 6, 6, 3), (1, 5))
    nchw = save(tmp_path / "nchw.onnx", [helper.make_node("Identity", ["x"], ["nchw"])] + body, inits, (1, 3, 6, 6), (1, 5))
    a, b = onnx_to_torch(nhwc), onnx_to_torch(nchw)
    assert a.chain and any(isinstance(m, Permute) for m in a.module)
    x = torch.rand(1, 6, 6, 3, generator=torch.Generator().manual_seed(0))
    lo_a, hi_a = x - 0.05, x + 0.05
    lo_b, hi_b = lo_a.permute(0, 3, 1, 2), hi_a.permute(0, 3, 1, 2)
    torch.testing.assert_close(a.module(x), b.module(x.permute(0, 3, 1, 2)))
    C = torch.eye(5, dtype=torch.float64)[:4] - torch.eye(5, dtype=torch.float64)[1:]
    d = torch.zeros(4, dtype=torch.float64)
    ca, cbn = Chain.of(a.module, a.input_shape), Chain.of(b.module, b.input_shape)
    torch.testing.assert_close(ibp_spec(ca, lo_a.double(), hi_a.double(), C, d),
                               ibp_spec(cbn, lo_b.double(), hi_b.double(), C, d))
    torch.testing.assert_close(crown_spec(ca, lo_a.double(), hi_a.double(), C, d)[0],
                               crown_spec(cbn, lo_b.double(), hi_b.double(), C, d)[0])


def test_unsupported_network_is_one_error_row_and_the_run_goes_on(tmp_path, run_cli):
    """A network with an operator outside the set (LpPool) is an `error` row with one stderr line
    naming the operator; the other instances of the CSV still run."""
    items = V.build("rl_benchmarks", tmp_path)
    known = [it for it in items if it.expected is not None][:2]
    pool = save(tmp_path / "lppool.onnx", [helper.make_node("LpPool", ["x"], ["p"], kernel_shape=[2, 2]),
                                           helper.make_node("Flatten", ["p"], ["y"], axis=1)], [], (1, 1, 2, 2), (1, 1))
    spec = tmp_path / "pool.vnnlib"
    spec.write_text(V.vnnlib([0.0] * 4, [1.0] * 4, 1, "(assert (<= Y_0 -1.0))"))
    inst = tmp_path / "mixed.csv"
    inst.write_text("".join(f"{it.network.name},{it.property.name},3\n" for it in known[:1]) + f"{pool.name},{spec.name},3\n"
                    + "".join(f"{it.network.name},{it.property.name},3\n" for it in known[1:]))
    out = tmp_path / "results.csv"
    r = run_cli("vnncomp", inst, "--out", out)
    assert r.exit_code == 0, r.output
    rows = [row for row in csv.reader(out.open()) if row]
    assert [row[4] for row in rows] == [known[0].expected, "error", known[1].expected]
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "LpPool" in err[0] and "lppool.onnx" in err[0]


def test_the_judges_own_search_finds_the_known_counterexamples(tmp_path):
    """The soundness check of `holds` on unknown instances relies on sampling and gradient descent
    (tests/vnncomp_lookalikes.pgd_violation); on instances with known answers it must find every
    counterexample and none where the property provably holds."""
    items = [it for it in V.build("rl_benchmarks", tmp_path) if it.expected is not None]
    assert [V.pgd_violation(it) for it in items] == [it.expected == "violated" for it in items]


def test_vnncomp_2022_layout_subfolders_and_gzip(tmp_path, run_cli):
    """VNN-COMP 2022+ folders keep networks in onnx/ and properties in vnnlib/, often gzipped; the
    result rows repeat the paths as the instances CSV writes them."""
    import gzip
    import shutil

    items = [it for it in V.build("rl_benchmarks", tmp_path / "build") if it.expected is not None][:2]
    root = tmp_path / "rl_benchmarks"
    (root / "onnx").mkdir(parents=True)
    (root / "vnnlib").mkdir()
    lines = []
    for k, it in enumerate(items):
        net = root / "onnx" / it.network.name
        shutil.copy(it.network, net)
        spec = root / "vnnlib" / (it.property.name + (".gz" if k == 0 else ""))
        spec.write_bytes(gzip.compress(it.property.read_bytes()) if k == 0 else it.property.read_bytes())
        if k == 1:
            net.with_suffix(".onnx.gz").write_bytes(gzip.compress(net.read_bytes()))
            net = net.with_suffix(".onnx.gz")
        lines.append(f"{net.relative_to(root)},{spec.relative_to(root)},3")
    (root / "instances.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "results.csv"
    r = run_cli("vnncomp", root / "instances.csv", "--out", out)
    assert r.exit_code == 0, r.output
    rows = [row for row in csv.reader(out.open()) if row]
    assert [(row[1], row[2], row[4]) for row in rows] == [
        ("./" + ln.split(",")[0], "./" + ln.split(",")[1], it.expected) for ln, it in zip(lines, items)]
    # counterexample files are named without the .onnx / .vnnlib / .gz suffixes
    names = sorted(p.name for p in (tmp_path / "results_counterexamples").iterdir())
    assert names == sorted(f"{it.network.stem}__{it.property.stem}.counterexample" for it in items
                           if it.expected == "violated")


def test_transpose_of_the_input_in_a_residual_graph_bounds_like_nchw(tmp_path):
    """The same Permute inside a graph model (a residual Add): native IBP and native CROWN refute
    the same margins as on the network fed NCHW directly."""
    from robustcli.certify.spec_verify import verify_property
    from robustcli.certify.vnnlib import parse_vnnlib

    rng = np.random.default_rng(0)
    w1, w2 = (rng.standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float32), (rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32)
    w3 = (rng.standard_normal((5, 4 * 6 * 6)) * 0.1).astype(np.float32)
    body = [helper.make_node("Conv", ["nchw", "w1"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Conv", ["r", "w2"], ["c2"], pads=[1, 1, 1, 1]), helper.make_node("Add", ["c2", "r"], ["s"]),
            helper.make_node("Relu", ["s"], ["r2"]), helper.make_node("Flatten", ["r2"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "w3"], ["y"], transB=1)]
    inits = [tensor("w1", w1), tensor("w2", w2), tensor("w3", w3)]
    nhwc = save(tmp_path / "nhwc.onnx", [helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2])] + body,
                inits, (1, 6, 6, 3), (1, 5))
    nchw = save(tmp_path / "nchw.onnx", [helper.make_node("Identity", ["x"], ["nchw"])] + body, inits, (1, 3, 6, 6), (1, 5))
    a, b = onnx_to_torch(nhwc), onnx_to_torch(nchw)
    assert not a.chain
    x = np.random.default_rng(1).uniform(0, 1, (6, 6, 3))
    label = int(np.argmax(V.ort_outputs(nhwc, x.reshape(-1))[0]))
    for eps in (0.001, 0.01):
        pa = parse_vnnlib(V.vnnlib((x - eps).reshape(-1), (x + eps).reshape(-1), 5, V.one_vs_all(label, 5)))
        xb = x.transpose(2, 0, 1)
        pb = parse_vnnlib(V.vnnlib((xb - eps).reshape(-1), (xb + eps).reshape(-1), 5, V.one_vs_all(label, 5)))
        for methods in (("ibp",), ("crown",)):
            ra = verify_property(a.module, pa, a.input_shape, methods=methods, timeout=20)
            rb = verify_property(b.module, pb, b.input_shape, methods=methods, timeout=20)
            assert ra.status == rb.status and ra.stages[0]["refuted"] == rb.stages[0]["refuted"], (ra.stages, rb.stages)
            assert "graph model" in ra.stages[0]["note"]


def test_convbig_sized_network_answers_within_a_one_second_timeout(tmp_path, run_cli):
    """A ConvBig-sized CNN (about 60,000 ReLUs) at a radius no stage decides quickly: with a 1 s
    timeout the row says timeout (or unknown) and its time is at most 1 s + 1 s."""
    items = V.build("cifar2020_big", tmp_path)
    inst = tmp_path / "one.csv"
    inst.write_text(f"{items[0].network.name},{items[0].property.name},1\n")
    out = tmp_path / "results.csv"
    r = run_cli("vnncomp", inst, "--out", out)
    assert r.exit_code == 0, r.output
    (row,) = [row for row in csv.reader(out.open()) if row]
    assert row[4] in ("timeout", "unknown") and float(row[5]) <= 2.0, row


@pytest.mark.parametrize("network", ["nhwc_transpose", "float64", "output_1x1x10"])
def test_certify_spec_on_idiom_networks(tmp_path, run_cli, network):
    """`robust certify --spec` (not only the runner) on the idioms that needed converter or
    reference changes: the known answers, a counterexample confirmed by onnxruntime."""
    items = {it.property.stem: it for it in V.build("idioms", tmp_path)}
    for kind in ("holds", "violated"):
        it = items[f"{network}_{kind}"]
        ce = tmp_path / f"{network}.counterexample"
        r = run_cli("certify", "--model", it.network, "--spec", it.property, "--timeout", "5", "--counterexample", ce)
        assert r.exit_code == 0, r.output
        assert f"result: {kind}" in r.output
        if kind == "violated":
            assert "confirmed by onnxruntime" in r.output and ce.exists()


def test_property_with_the_wrong_number_of_outputs_is_one_clear_line(tmp_path, run_cli):
    """A property declaring more (or fewer) Y_j than the network has outputs: an `error` row in the
    runner and exit 2 in `certify --spec`, one line naming both counts (it was a shape error inside
    the attack)."""
    it = next(it for it in V.build("rl_benchmarks", tmp_path) if it.expected == "holds")  # 2 outputs
    text = it.property.read_text().replace("(declare-const Y_1 Real)", "(declare-const Y_1 Real)\n(declare-const Y_2 Real)")
    spec = tmp_path / "three_outputs.vnnlib"
    spec.write_text(text)
    (tmp_path / "inst.csv").write_text(f"{it.network.name},{spec.name},3\n{it.network.name},{it.property.name},3\n")
    out = tmp_path / "results.csv"
    r = run_cli("vnncomp", tmp_path / "inst.csv", "--out", out)
    assert r.exit_code == 0, r.output
    assert [row[4] for row in csv.reader(out.open()) if row] == ["error", "holds"]
    assert "3 outputs Y_j" in r.stderr and "2 outputs" in r.stderr
    r = run_cli("certify", "--model", it.network, "--spec", spec)
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "does not fit" in r.stderr


def test_byte_order_marks_in_the_csv_and_the_property_are_ignored(tmp_path, run_cli):
    """Files saved by Windows editors or spreadsheets start with a UTF-8 byte-order mark."""
    it = next(it for it in V.build("rl_benchmarks", tmp_path) if it.expected == "violated")
    spec = tmp_path / "bom.vnnlib"
    spec.write_bytes(b"\xef\xbb\xbf" + it.property.read_bytes())
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + f"{it.network.name},{spec.name},3\r\n".encode())
    out = tmp_path / "results.csv"
    r = run_cli("vnncomp", tmp_path / "bom.csv", "--out", out)
    assert r.exit_code == 0, r.output
    assert [row[4] for row in csv.reader(out.open()) if row] == ["violated"]


def test_split_and_slice_networks_are_bounded_soundly_by_every_stage(tmp_path):
    """Inputs cut by Split / Slice into two heads joined by Concat (a graph model): each bound stage
    alone proves the Lipschitz-proved instance where it can, never a property with a counterexample,
    and any `holds` at a larger radius survives gradient descent."""
    from robustcli.certify.spec_verify import verify_property
    from robustcli.certify.vnnlib import read_vnnlib

    items = [it for it in V.build("rl_benchmarks", tmp_path) if it.network.stem.startswith("dubinsrejoin")]
    assert len({it.network for it in items}) == 2
    for it in items:
        conv = onnx_to_torch(it.network)
        assert not conv.chain
        prop = read_vnnlib(it.property)
        for methods in (("ibp",), ("crown",), ("alpha-crown",)):
            res = verify_property(conv.module, prop, conv.input_shape, methods=methods, timeout=10)
            assert not (res.status == "holds" and it.expected == "violated"), (it.property.name, methods)
            if it.expected == "holds":
                assert res.status == "holds", (it.property.name, methods, res.stages)
            if res.status == "holds" and it.expected is None:
                assert not V.pgd_violation(it), (it.property.name, methods)
