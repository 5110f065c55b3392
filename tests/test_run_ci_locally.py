"""The parsing half of scripts/run_ci_locally.py on the shipped CI files: the steps come out in file
order, actions are marked as skipped with a stand-in, the uploaded paths are found, and `${{ }}`
expressions expand or fail loudly. Running the jobs (a pip install, minutes) is the script's own
work, not this suite's."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import yaml

from doc_commands import ROOT

REPORTS = ["robust-report.json", "robust-report.xml", "robust-report.md", "robust-report.html"]


@pytest.fixture(scope="module")
def ci():
    spec = importlib.util.spec_from_file_location("run_ci_locally", ROOT / "scripts" / "run_ci_locally.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_ci_locally"] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


def test_github_steps_in_order_with_actions_skipped(ci):
    job = ci.load_github_job(ROOT / "configs" / "github-actions.yml")
    raw = yaml.safe_load((ROOT / "configs" / "github-actions.yml").read_text())
    (raw_job,) = raw["jobs"].values()
    assert len(job.steps) == len(raw_job["steps"])
    for step, raw_step in zip(job.steps, raw_job["steps"]):
        assert step.kind == ("uses" if "uses" in raw_step else "run")
        assert step.command == raw_step.get("run", "")
    runs = [s.command for s in job.steps if s.kind == "run"]
    assert "pip install ." in runs[0] and "--index-url https://download.pytorch.org/whl/cpu" in runs[0]
    assert runs[1].startswith("robust eval configs/ci-example.yaml")
    assert [s.is_gate for s in job.steps if s.kind == "run"] == [False, True]
    actions = [s.uses.split("@")[0] for s in job.steps if s.kind == "uses"]
    assert actions == ["actions/checkout", "actions/setup-python", "actions/cache", "actions/upload-artifact"]
    for s in job.steps:
        if s.kind == "uses":
            assert "no stand-in" not in ci.stand_in(s, "python3.11")
    upload = job.steps[-1]
    assert upload.runs_after_failure and not job.steps[-2].runs_after_failure
    assert job.artifacts == REPORTS
    assert job.timeout_s == 30 * 60


def test_gitlab_script_lines_in_order_and_artifacts(ci):
    job = ci.load_gitlab_job(ROOT / "configs" / "gitlab-ci.yml")
    (raw_job,) = yaml.safe_load((ROOT / "configs" / "gitlab-ci.yml").read_text()).values()
    assert job.steps[0].kind == "uses" and job.steps[0].uses == f"image:{raw_job['image']}"
    assert [s.command for s in job.steps[1:]] == raw_job["script"]
    assert [s.is_gate for s in job.steps[1:]] == [False, False, True]
    assert job.artifacts == REPORTS
    assert job.junit == ["robust-report.xml"]


def test_expressions_expand_or_fail(ci):
    assert ci.expand_github("${{ github.workspace }}/.cache", {"github.workspace": "/w"}) == "/w/.cache"
    with pytest.raises(ValueError, match="unknown expression"):
        ci.expand_github("${{ secrets.TOKEN }}", {"github.workspace": "/w"})
    assert ci.expand_gitlab("$CI_PROJECT_DIR/.cache/${X}", {"CI_PROJECT_DIR": "/p", "X": "pip"}) == "/p/.cache/pip"


def test_checks_report_missing_artifacts_and_wrong_gate_exit(ci, tmp_path):
    job = ci.load_github_job(ROOT / "configs" / "github-actions.yml")
    results = [ci.StepResult(s, None if s.kind == "uses" else (1 if s.is_gate else 0), 0.0, "") for s in job.steps]
    (tmp_path / "robust-report.md").write_text("## robust eval\n| gate |\n")
    problems = ci.check_job(job, results, tmp_path, "", expect_gate_exit=0)
    assert "`robust eval` step exited 1, expected 0" in problems
    assert "artifact robust-report.json was not written" in problems
    assert "$GITHUB_STEP_SUMMARY did not receive the Markdown report" in problems
    assert "cache path .cache/robustcli is missing or empty after the job: the cache would save nothing" in problems
    for name in REPORTS:
        (tmp_path / name).write_text("x" if name != "robust-report.md" else "## robust eval\n| gate |\n")
    (tmp_path / ".cache" / "robustcli").mkdir(parents=True)
    (tmp_path / ".cache" / "robustcli" / "digits-mlp.safetensors").write_text("x")
    assert ci.check_job(job, results, tmp_path, "## robust eval\n| gate |\n\n", expect_gate_exit=1) == []


def test_unreachable_cpu_index_becomes_the_makefile_torch(ci):
    job = ci.load_github_job(ROOT / "configs" / "github-actions.yml")
    install = next(s.command for s in job.steps if s.kind == "run")
    spec = ci.makefile_torch()
    assert spec.startswith("torch==")
    here, note = ci.local_command(install, spec, resolves=lambda url: False)
    assert f"pip install {spec}\n" in here and "download.pytorch.org" not in here
    assert "pip install ." in here and "unreachable" in note
    assert ci.local_command(install, spec, resolves=lambda url: True) == (install, "")


def test_cache_paths_found_and_checked(ci, tmp_path):
    github = ci.load_github_job(ROOT / "configs" / "github-actions.yml")
    gitlab = ci.load_gitlab_job(ROOT / "configs" / "gitlab-ci.yml")
    assert github.caches == [".cache/robustcli"]
    assert gitlab.caches == [".cache/robustcli", ".cache/pip"]
    results = [ci.StepResult(s, 0, 0.0, "") for s in gitlab.steps]
    for name in REPORTS:
        (tmp_path / name).write_text("x")
    (tmp_path / ".cache" / "robustcli").mkdir(parents=True)
    (tmp_path / ".cache" / "robustcli" / "digits-mlp.safetensors").write_text("x")
    assert gitlab.pip_caches == [".cache/pip"] and github.pip_caches == []
    assert ci.check_job(gitlab, results, tmp_path, "", expect_gate_exit=0) == []  # pip's cache: not checked
    (tmp_path / ".cache" / "robustcli" / "digits-mlp.safetensors").unlink()
    assert ci.check_job(gitlab, results, tmp_path, "", expect_gate_exit=0) == [
        "cache path .cache/robustcli is missing or empty after the job: the cache would save nothing"]


def test_break_gate_raises_the_first_accuracy_gate(ci, tmp_path):
    job = ci.load_github_job(ROOT / "configs" / "github-actions.yml")
    (tmp_path / "configs").mkdir()
    shipped = (ROOT / "configs" / "ci-example.yaml").read_text()
    (tmp_path / "configs" / "ci-example.yaml").write_text(shipped)
    change = ci.break_first_gate(job, tmp_path)
    broken = (tmp_path / "configs" / "ci-example.yaml").read_text()
    assert "clean_accuracy >= 1.0" in broken and "clean_accuracy >= 0.9" in shipped
    assert broken.replace("clean_accuracy >= 1.0", "clean_accuracy >= 0.9") == shipped
    assert "raised to `clean_accuracy >= 1.0`" in change
