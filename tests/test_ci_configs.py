"""The CI files users copy: they parse, their `robust` commands exist, the configs they name
validate, they keep the built-in model cache and upload every report, and docs/ci.md shows them
verbatim."""

from __future__ import annotations

import re

import pytest
import yaml

from doc_commands import ROOT, doc_commands, parse_command

GITHUB = ROOT / "configs" / "github-actions.yml"
GITLAB = ROOT / "configs" / "gitlab-ci.yml"
REPORTS = {"robust-report.json", "robust-report.xml", "robust-report.md", "robust-report.html"}


def _robust_lines(path) -> list:
    return [c for c in doc_commands([path]) if c.complete]


@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=lambda p: p.name)
def test_ci_commands_parse_and_their_configs_validate(path, monkeypatch):
    from robustcli.evalconfig import load_eval_config

    monkeypatch.chdir(ROOT)
    commands = _robust_lines(path)
    assert [c.argv[0] for c in commands] == ["eval"]
    for c in commands:
        ctx = parse_command(c.argv, complete=True)
        load_eval_config(ctx.params["config_path"])
        written = {ctx.params[k] for k in ("json_path", "junit_path", "markdown_path", "html_path")}
        assert written == REPORTS


def test_github_workflow_shape():
    doc = yaml.safe_load(GITHUB.read_text())
    assert doc.get("on", doc.get(True))  # PyYAML reads the bare key `on` as True
    (job,) = doc["jobs"].values()
    steps = job["steps"]
    uses = {s["uses"].split("@")[0]: s for s in steps if "uses" in s}
    assert {"actions/checkout", "actions/setup-python", "actions/cache", "actions/upload-artifact"} <= set(uses)
    cache_path = uses["actions/cache"]["with"]["path"]
    assert job["env"]["ROBUSTCLI_CACHE"].endswith(cache_path)
    upload = uses["actions/upload-artifact"]
    assert upload["if"] == "always()"
    assert set(upload["with"]["path"].split()) == REPORTS
    # the cache key hashes files that exist
    for name in re.findall(r"'([^']+)'", uses["actions/cache"]["with"]["key"]):
        assert (ROOT / name).exists(), name
    # steps run in order: install before the eval
    runs = [s.get("run", "") for s in steps]
    assert any("pip install ." in r for r in runs)
    assert [i for i, r in enumerate(runs) if "pip install ." in r][0] < [i for i, r in enumerate(runs) if "robust eval" in r][0]


def test_gitlab_job_shape():
    (job,) = yaml.safe_load(GITLAB.read_text()).values()
    assert job["variables"]["ROBUSTCLI_CACHE"] == "$CI_PROJECT_DIR/.cache/robustcli"
    assert ".cache/robustcli" in job["cache"]["paths"]
    assert set(job["artifacts"]["paths"]) == REPORTS
    assert job["artifacts"]["when"] == "always"
    assert job["artifacts"]["reports"]["junit"] == "robust-report.xml"


def test_ci_doc_shows_the_files_verbatim():
    text = (ROOT / "docs" / "ci.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert GITHUB.read_text() in blocks
    assert GITLAB.read_text() in blocks
