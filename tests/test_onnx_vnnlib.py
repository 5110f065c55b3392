"""VNNLIB parsing: boxes, and/or forms, linear terms; unsupported constructs name their line."""

from __future__ import annotations

import pytest
import torch

from robustcli.certify.vnnlib import parse_vnnlib, robustness_vnnlib
from robustcli.core.errors import InputError

HEAD = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n(declare-const Y_2 Real)\n"
BOX = "(assert (<= X_0 0.5))\n(assert (>= X_0 -0.5))\n(assert (<= X_1 1))\n(assert (>= X_1 0))\n"


def test_mnist_style_or_of_ands():
    prop = parse_vnnlib(HEAD + BOX + "(assert (or\n (and (>= Y_0 Y_2))\n (and (>= Y_1 Y_2))\n))\n")
    assert (prop.n_inputs, prop.n_outputs, len(prop.cases)) == (2, 3, 1)
    case = prop.cases[0]
    assert case.lower.tolist() == [-0.5, 0.0] and case.upper.tolist() == [0.5, 1.0]
    C, d, rows = case.stacked()
    # margins Y_2 - Y_j: the violation side is <= 0
    assert C.tolist() == [[-1.0, 0.0, 1.0], [0.0, -1.0, 1.0]] and d.tolist() == [0.0, 0.0]
    assert [(r.start, r.stop) for r in rows] == [(0, 1), (1, 2)]
    y = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 2.0], [0.0, 2.0, 2.0]], dtype=torch.float64)
    assert case.violated_by(y).tolist() == [False, True, True]  # >= includes the tie


def test_conjunctions_terms_and_strictness():
    text = HEAD + BOX + "(assert (and (< (+ Y_0 (* 2 Y_1)) 3) (> (- Y_2 Y_0) (- 1.5))))\n"
    case = parse_vnnlib(text).cases[0]
    assert len(case.disjuncts) == 1
    o = case.disjuncts[0]
    assert o.C.tolist() == [[1.0, 2.0, 0.0], [1.0, 0.0, -1.0]] and o.d.tolist() == [-3.0, -1.5]
    assert o.strict.tolist() == [True, True]
    y = torch.tensor([[0.0, 1.5, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    assert o.violated_by(y).tolist() == [False, True]  # 0 + 3 < 3 is false: strict


def test_and_of_ors_expands_and_input_disjunction_makes_two_boxes():
    text = HEAD + (
        "(assert (or (and (<= X_0 0) (>= X_0 -1) (<= X_1 1) (>= X_1 0))"
        " (and (<= X_0 1) (>= X_0 0) (<= X_1 1) (>= X_1 0))))\n"
        "(assert (and (or (>= Y_0 Y_2) (>= Y_1 Y_2)) (or (<= Y_0 1) (= Y_1 2))))\n"
    )
    prop = parse_vnnlib(text)
    assert len(prop.cases) == 2
    assert all(len(c.disjuncts) == 4 for c in prop.cases)
    assert sorted(c.lower[0].item() for c in prop.cases) == [-1.0, 0.0]
    eq = [o for o in prop.cases[0].disjuncts if len(o.d) == 3]  # (>=) and the two halves of (=)
    assert len(eq) == 2


def test_empty_box_is_dropped():
    prop = parse_vnnlib(HEAD + BOX + "(assert (<= X_1 -1))\n(assert (>= Y_0 Y_1))\n")
    assert prop.cases == []


@pytest.mark.parametrize(
    "line, what",
    [
        ("(assert (<= (* Y_0 Y_1) 3))", "product of two variables"),
        ("(assert (=> (>= Y_0 Y_1) (>= Y_1 Y_2)))", "unsupported construct (=>"),
        ("(define-fun f () Real 1)", "unsupported command (define-fun"),
        ("(assert (<= X_0 Y_0))", "mixes inputs"),
        ("(assert (<= (+ X_0 X_1) 1))", "single X_i"),
        ("(assert (>= Y_0 Z_3))", "unknown symbol 'Z_3'"),
    ],
)
def test_unsupported_lines_are_named(line, what):
    text = HEAD + BOX + line + "\n"
    with pytest.raises(InputError) as e:
        parse_vnnlib(text, "p.vnnlib")
    assert "p.vnnlib:10:" in str(e.value) and what in str(e.value)


def test_unbounded_input_and_unbalanced_parens():
    with pytest.raises(InputError, match="X_1 has no finite"):
        parse_vnnlib(HEAD + "(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (>= Y_0 Y_1))\n")
    with pytest.raises(InputError, match=r"p.vnnlib:6: '\(' is never closed"):
        parse_vnnlib(HEAD + "(assert (<= X_0 1)\n", "p.vnnlib")


def test_cli_names_the_bad_line(tmp_path, run_cli):
    from onnx_helpers import mlp_onnx

    net = mlp_onnx(tmp_path / "m.onnx", sizes=(2, 4, 3))
    spec = tmp_path / "bad.vnnlib"
    spec.write_text(HEAD + BOX + "(assert (>= (* Y_0 Y_1) 0))\n")
    r = run_cli("certify", "--model", net, "--spec", spec)
    assert r.exit_code == 2
    assert "bad.vnnlib:10:" in r.stderr and "Traceback" not in r.output


def test_robustness_vnnlib_reads_back_as_the_box_and_one_disjunct_per_other_class():
    lo, hi = torch.tensor([[0.1, 0.25], [0.0, 0.5]]), torch.tensor([[0.2, 0.5], [0.125, 1.0]])
    (case,) = parse_vnnlib(robustness_vnnlib(lo, hi, 2, 4)).cases
    assert torch.equal(case.lower, lo.flatten().double()) and torch.equal(case.upper, hi.flatten().double())
    assert len(case.disjuncts) == 3
    y = torch.tensor([[1.0, 0.0, 2.0, 0.5], [1.0, 0.0, 0.9, 0.5], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert case.violated_by(y).tolist() == [False, True, True]  # a tie counts as reaching the label
