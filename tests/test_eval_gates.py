"""`robust eval`: exit codes, the three reports, config errors with line numbers, determinism."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from robustcli.core.errors import InputError
from robustcli.evalconfig import load_eval_config
from robustcli.gates import Gate, parse_gate_string

FAILING_GATE = "robust_accuracy >= 0.95 at eps=0.1"


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def reports(tmp_path: Path) -> list[str]:
    return ["--json", str(tmp_path / "r.json"), "--junit", str(tmp_path / "r.xml"), "--markdown", str(tmp_path / "r.md")]


FAILING_CONFIG = f"""\
model: digits-mlp
n: 60
seed: 3
checks:
  - name: pgd-check
    type: attack
    attacks: [fgsm, pgd]
    eps: [0.05, 0.1]
    steps: 10
    gates:
      - clean_accuracy >= 0.5
      - {FAILING_GATE}
"""


def test_failing_gate_exits_1_and_is_named_in_all_three_reports(run_cli, tmp_path):
    cfg = write(tmp_path, FAILING_CONFIG)
    r = run_cli("eval", cfg, *reports(tmp_path))
    assert r.exit_code == 1, r.output
    assert "1 of 2 gates failed" in r.stderr and FAILING_GATE in r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] is False and report["gates_failed"] == 1
    (gate,) = [g for c in report["checks"] for g in c["gates"] if not g["passed"]]
    assert gate["gate"] == FAILING_GATE and gate["check"] == "pgd-check" and gate["value"] < 0.95
    root = ET.parse(tmp_path / "r.xml").getroot()
    assert root.tag == "testsuites" and root.get("tests") == "2" and root.get("failures") == "1"
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == 2
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == [FAILING_GATE]
    assert failed[0].get("classname") == "robust.eval.pgd-check"
    md = (tmp_path / "r.md").read_text()
    assert "1 of 2 gates failed" in md and f"`{FAILING_GATE}`" in md and "FAIL" in md


def test_passing_ci_example_exits_0(run_cli, tmp_path):
    r = run_cli("eval", "configs/ci-example.yaml", *reports(tmp_path))
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and report["gates_failed"] == 0 and report["gates_total"] >= 6
    assert {c["type"] for c in report["checks"]} == {"attack", "certify", "scaling"}
    assert ET.parse(tmp_path / "r.xml").getroot().get("failures") == "0"
    assert "all" in (tmp_path / "r.md").read_text()


def test_reports_are_deterministic_given_the_seed(run_cli, tmp_path):
    cfg = write(tmp_path, FAILING_CONFIG)
    runs = []
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        assert run_cli("eval", cfg, *reports(tmp_path / d)).exit_code == 1
        report = json.loads((tmp_path / d / "r.json").read_text())
        runs.append([(g["gate"], g["value"], g["message"]) for c in report["checks"] for g in c["gates"]])
        runs.append([r["robust_accuracy"] for c in report["checks"] for r in c["details"]["results"]])
    assert runs[0] == runs[2] and runs[1] == runs[3]


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("model: digits-mlp\nn: 10\nchekcs: []\n", 3, ["chekcs", "checks"]),
        ("model: digits-mlp\nn: ten\nchecks: []\n", 2, ["n must be an integer"]),
        ("model: missing.pt\nchecks: [{type: attack, attacks: pgd, eps: 0.1, gates: [clean_accuracy > 0.5]}]\n", 1, ["missing.pt"]),
        ("model: digits-mlp\ndata: nowhere.npz\nchecks: [{type: attack, attacks: pgd, eps: 0.1, gates: [clean_accuracy > 0.5]}]\n", 2, ["nowhere.npz"]),
        (
            "model: digits-mlp\nchecks:\n  - type: attack\n    attacks: [pgd]\n    eps: 0.1\n    stpes: 5\n    gates: [clean_accuracy >= 0.5]\n",
            6,
            ["stpes", "steps"],
        ),
        (
            "model: digits-mlp\nchecks:\n  - type: attack\n    attacks: [pgd]\n    eps: [0.1, 0.2]\n    gates:\n      - robust_accuracy >= 0.5\n",
            7,
            ["at which eps"],
        ),
        (
            "model: digits-mlp\nchecks:\n  - type: attack\n    attacks: [pgd]\n    eps: 0.1\n    gates:\n      - robust_acc >= 0.5\n",
            7,
            ["robust_acc", "robust_accuracy"],
        ),
        ("model: digits-mlp\nchecks:\n  - type: attakc\n    gates: [x > 1]\n", 3, ["attakc", "attack"]),
        ("model: digits-mlp\nchecks:\n  - type: attack\n    attacks: pgd\n    eps: 0.1\n    gates: []\n", 6, ["gates"]),
        ("model: digits-mlp\nchecks:\n  - type: attack\n    attacks: nope\n    eps: 0.1\n    gates: [clean_accuracy > 0]\n", 4, ["nope"]),
        ("model: digits-mlp\nchecks: [\n", 3, ["not valid YAML"]),
        ("model: digits-mlp\nmodel: digits-mlp\nchecks: []\n", 2, ["repeats"]),
    ],
)
def test_malformed_config_exits_2_naming_key_and_line(run_cli, tmp_path, text, line, words):
    cfg = write(tmp_path, text)
    r = run_cli("eval", cfg, *reports(tmp_path))
    assert r.exit_code == 2, r.output
    assert f"c.yaml:{line}:" in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr
    assert "Traceback" not in r.output
    assert not any((tmp_path / f"r.{s}").exists() for s in ("json", "xml", "md"))


def test_a_check_type_this_build_lacks_gives_a_clear_config_error(tmp_path, monkeypatch):
    """Names listed in NOT_AVAILABLE (engines from branches not merged) exit 2 with the reason."""
    import robustcli.evalconfig as evalconfig

    monkeypatch.setitem(evalconfig.NOT_AVAILABLE, "future", "check type 'future' needs an engine this build lacks")
    cfg = write(tmp_path, "model: digits-mlp\nchecks:\n  - type: future\n    gates: [clean_accuracy > 0]\n")
    with pytest.raises(InputError, match="c.yaml:3: check type 'future' needs an engine"):
        load_eval_config(cfg)


def test_missing_config_and_bad_output_names(run_cli, tmp_path):
    r = run_cli("eval", tmp_path / "none.yaml")
    assert r.exit_code == 2 and "does not exist" in r.stderr
    r = run_cli("eval", "configs/ci-example.yaml", "--junit", tmp_path / "r.json")
    assert r.exit_code == 2 and ".xml" in r.stderr
    r = run_cli("eval", "configs/ci-example.yaml", "--json", tmp_path / "no" / "r.json")
    assert r.exit_code == 2 and "does not exist" in r.stderr


def test_gate_strings():
    assert parse_gate_string("robust_accuracy >= 0.6 at eps=0.1") == Gate("robust_accuracy", ">=", 0.6, 0.1)
    assert parse_gate_string("robust_accuracy>=.6 @ eps 1e-1") == Gate("robust_accuracy", ">=", 0.6, 0.1)
    assert parse_gate_string("clean_accuracy < 1") == Gate("clean_accuracy", "<", 1.0)
    assert parse_gate_string("no_masking_warnings").is_flag
    with pytest.raises(ValueError):
        parse_gate_string("robust_accuracy >> 0.6")


def test_relative_model_path_resolves_next_to_the_config(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.pt").write_bytes(b"")
    cfg = write(tmp_path / "sub", "model: m.pt\nchecks: [{type: attack, attacks: pgd, eps: 0.1, gates: [clean_accuracy > 0.5]}]\n")
    config = load_eval_config(cfg)
    assert Path(config.model) == tmp_path / "sub" / "m.pt"
    assert config.checks[0].gates[0] == Gate("clean_accuracy", ">", 0.5)


def test_a_model_that_fails_to_load_names_the_config_line(run_cli, tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"not a model")
    cfg = write(tmp_path, "n: 5\nmodel: broken.pt\ndata: digits\nchecks: [{type: attack, attacks: pgd, eps: 0.1, gates: [clean_accuracy > 0.5]}]\n")
    r = run_cli("eval", cfg, *reports(tmp_path))
    assert r.exit_code == 2 and "c.yaml:2:" in r.stderr and "broken.pt" in r.stderr
    assert not (tmp_path / "r.json").exists()
