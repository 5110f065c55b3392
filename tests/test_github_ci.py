"""On GitHub Actions (`GITHUB_ACTIONS=true`), `robust eval` annotates each failing gate with a
`::error` workflow command naming the gate and the measured value, and appends its Markdown
report to `$GITHUB_STEP_SUMMARY`; elsewhere it does neither."""

from __future__ import annotations

import json

import pytest

from robustcli.github import error_annotations

FAILING = (
    "model: digits-mlp\nn: 40\nchecks:\n"
    "  - name: linf\n    type: attack\n    attacks: [fgsm]\n    eps: [0.1]\n"
    "    gates: [clean_accuracy >= 0.5, robust_accuracy >= 0.99 at eps=0.1]\n"
)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "gate.yaml"
    path.write_text(FAILING)
    return path


def test_failing_gate_is_annotated_and_summarised(run_cli, tmp_path, config, monkeypatch):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    r = run_cli("eval", config, "--json", tmp_path / "r.json")
    assert r.exit_code == 1
    measured = json.loads((tmp_path / "r.json").read_text())["checks"][0]["gates"][1]["value"]
    errors = [line for line in r.output.splitlines() if line.startswith("::error")]
    assert errors == [
        "::error title=robust eval gate failed%3A linf::gate robust_accuracy >= 0.99 at eps=0.1 of check linf "
        f"failed (measured {measured:.4g}): measured {measured:.4g}, required >= 0.99: fails"
    ]
    text = summary.read_text()
    assert text.startswith("earlier step\n")  # appended, not overwritten
    assert "## robust eval" in text and "❌ 1 of 2 gates failed" in text


def test_nothing_github_specific_elsewhere(run_cli, tmp_path, config, monkeypatch):
    summary = tmp_path / "summary.md"
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    r = run_cli("eval", config)
    assert r.exit_code == 1
    assert "::error" not in r.output
    assert not summary.exists()


def test_annotation_escapes_workflow_command_characters():
    report = {"checks": [{"name": "a,b:c", "gates": [
        {"gate": "x >= 1", "passed": False, "value": None, "message": "50% of\nlines"},
        {"gate": "y", "passed": True, "value": 1.0, "message": "ok"},
    ]}]}  # fmt: skip
    (line,) = error_annotations(report)
    assert line == (
        "::error title=robust eval gate failed%3A a%2Cb%3Ac::gate x >= 1 of check a,b:c failed (not measured): "
        "50%25 of%0Alines"
    )
