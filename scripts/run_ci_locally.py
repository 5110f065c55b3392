"""Run the shipped CI jobs (configs/github-actions.yml, configs/gitlab-ci.yml) on this machine.

    nice -n 19 python scripts/run_ci_locally.py [--only github|gitlab] [--keep] [--expect-gate-exit 0]

No GitHub or GitLab runner (and no container engine) is needed: each job runs in a fresh `git clone`
of this repository at its current commit, in a temporary folder, with the environment a runner
provides (`CI=true`; `GITHUB_ACTIONS=true`, `GITHUB_WORKSPACE`, `GITHUB_STEP_SUMMARY`, ... on
GitHub; `GITLAB_CI=true`, `CI_PROJECT_DIR`, ... on GitLab). Shell steps run as the runner runs them:
a GitHub `run:` step as `bash -e` on a script file, after a failed step only the `if: always()`
steps run; each GitLab `script:` line in order, the job stopping at the first failing line.

Steps that call an action (`uses:`) cannot run here; each is printed with what stands in for it:
the clone for actions/checkout, a fresh virtual environment of this machine's Python for
actions/setup-python (or for GitLab's `image:`), an empty folder (a cache miss) for actions/cache,
and the artifact check below for actions/upload-artifact. Packages come from this machine's pip
configuration (its package indexes and wheel folders), which is where a runner's network differs.

After a job the script checks that every artifact path the job uploads exists and is not empty,
that the GitHub step summary received the Markdown report, and that the `robust eval` step exited
with the expected code (0: the shipped config's gates all hold; `robust eval` exits 1 on a failing
gate and 2 on a bad config). It prints a Markdown table of steps with exit codes and wall times and
exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GITHUB_FILE = ROOT / "configs" / "github-actions.yml"
GITLAB_FILE = ROOT / "configs" / "gitlab-ci.yml"

# What stands in for each action this machine cannot run (keyed by the action without its version).
STAND_INS = {
    "actions/checkout": "the fresh git clone of the repository at its current commit",
    "actions/setup-python": "a fresh venv of this machine's Python {python} put first on PATH",
    "actions/cache": "nothing: the cache path starts empty, as on a cache miss",
    "actions/upload-artifact": "the artifact check after the job (every path exists, not empty)",
}


# The PyTorch CPU index the workflows name; where it cannot be reached, torch comes the Makefile's way.
TORCH_CPU_INDEX = re.compile(r"pip install torch --index-url (https://download\.pytorch\.org/whl/cpu)\b")


@dataclass(frozen=True)
class Step:
    """One step of a CI job: a shell command (`run`) or an action that is skipped (`uses`)."""

    name: str
    kind: str  # "run" or "uses"
    command: str = ""
    uses: str = ""
    condition: str = ""  # GitHub's `if:`; empty means success()

    @property
    def runs_after_failure(self) -> bool:
        return any(f in self.condition for f in ("always()", "failure()"))

    @property
    def is_gate(self) -> bool:
        return self.kind == "run" and "robust eval" in self.command


@dataclass(frozen=True)
class CiJob:
    """A job as the runner sees it: its environment, steps in order, and the paths it uploads."""

    platform: str  # "github" or "gitlab"
    name: str
    env: dict[str, str]
    steps: list[Step]
    artifacts: list[str]
    junit: list[str] = field(default_factory=list)
    caches: list[str] = field(default_factory=list)
    timeout_s: float = 3600.0

    @property
    def pip_caches(self) -> list[str]:
        """Cache paths that hold pip's cache. They are not checked: this machine's packages come from
        local wheel folders and a package proxy, and pip writes no cache entry for them."""
        pip_dir = self.env.get("PIP_CACHE_DIR", "")
        return [c for c in self.caches if pip_dir.endswith("/" + c)]


def _step_name(step: dict, command: str, uses: str) -> str:
    if step.get("name"):
        return str(step["name"])
    if uses:
        return uses
    return command.strip().splitlines()[0]


def load_github_job(path: Path = GITHUB_FILE) -> CiJob:
    """The workflow's single job: its env, its steps in file order, the upload-artifact paths."""
    doc = yaml.safe_load(path.read_text())
    jobs = doc.get("jobs") or {}
    if len(jobs) != 1:
        raise ValueError(f"{path}: expected one job, found {len(jobs)}")
    (name, job), = jobs.items()
    steps: list[Step] = []
    artifacts: list[str] = []
    caches: list[str] = []
    for raw in job.get("steps", []):
        condition = str(raw.get("if", ""))
        if "uses" in raw:
            uses = str(raw["uses"])
            steps.append(Step(_step_name(raw, "", uses), "uses", uses=uses, condition=condition))
            if uses.split("@")[0] == "actions/upload-artifact":
                artifacts += str((raw.get("with") or {}).get("path", "")).split()
            if uses.split("@")[0] == "actions/cache":
                caches += str((raw.get("with") or {}).get("path", "")).split()
        elif "run" in raw:
            command = str(raw["run"])
            steps.append(Step(_step_name(raw, command, ""), "run", command=command, condition=condition))
        else:
            raise ValueError(f"{path}: job {name}: a step has neither `run` nor `uses`: {raw}")
    env = {str(k): str(v) for k, v in (job.get("env") or {}).items()}
    timeout_s = 60.0 * float(job.get("timeout-minutes", 360))
    return CiJob("github", str(name), env, steps, artifacts, caches=caches, timeout_s=timeout_s)


def load_gitlab_job(path: Path = GITLAB_FILE) -> CiJob:
    """The file's single job: `image:` as a skipped step, then one step per `script:` line."""
    doc = yaml.safe_load(path.read_text())
    jobs = {k: v for k, v in doc.items() if isinstance(v, dict) and "script" in v}
    if len(jobs) != 1:
        raise ValueError(f"{path}: expected one job with a `script`, found {len(jobs)}")
    (name, job), = jobs.items()
    steps: list[Step] = []
    for key in ("before_script", "script"):
        lines = job.get(key) or []
        steps += [Step(str(line), "run", command=str(line)) for line in ([lines] if isinstance(lines, str) else lines)]
    if job.get("image"):
        steps.insert(0, Step(f"image: {job['image']}", "uses", uses=f"image:{job['image']}"))
    artifacts_spec = job.get("artifacts") or {}
    artifacts = [str(p) for p in artifacts_spec.get("paths", [])]
    junit = (artifacts_spec.get("reports") or {}).get("junit", [])
    junit = [junit] if isinstance(junit, str) else [str(p) for p in junit]
    env = {str(k): str(v) for k, v in (job.get("variables") or {}).items()}
    caches = [str(p) for p in (job.get("cache") or {}).get("paths", [])]
    return CiJob("gitlab", str(name), env, steps, artifacts, junit=junit, caches=caches)


_EXPRESSION = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")


def expand_github(text: str, context: dict[str, str]) -> str:
    """Replace `${{ name }}` with its value; an expression this script does not know is an error
    (a silently empty value would hide exactly the kind of mistake a local run is meant to find)."""

    def value(match: re.Match) -> str:
        key = match.group(1)
        if key not in context:
            raise ValueError(f"unknown expression ${{{{ {key} }}}}; known here: {', '.join(sorted(context))}")
        return context[key]

    return _EXPRESSION.sub(value, text)


def expand_gitlab(text: str, env: dict[str, str]) -> str:
    """GitLab expands `$NAME` and `${NAME}` in variables; an unknown name becomes empty, as there."""
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), ""), text)


def makefile_torch() -> str:
    """The Makefile's CPU torch requirement (`TORCH_CPU ?= torch==X`), what `make install` and
    `.ci/run` install first."""
    match = re.search(r"^TORCH_CPU \?= (\S+)", (ROOT / "Makefile").read_text(), flags=re.M)
    if match is None:
        raise ValueError("Makefile: no `TORCH_CPU ?= ...` line")
    return match.group(1)


def _resolves(url: str) -> bool:
    host = re.sub(r"^https?://([^/:]+).*", r"\1", url)
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def local_command(command: str, torch_spec: str, resolves=_resolves) -> tuple[str, str]:
    """The command as it runs here, and a note when it differs from the file: an unreachable
    PyTorch CPU index is replaced by the Makefile's torch requirement. Without this, pip would not
    fail but quietly take torch from whatever other index this machine's pip.conf names (here a
    CUDA build with gigabytes of nvidia-* wheels)."""
    match = TORCH_CPU_INDEX.search(command)
    if match is None or resolves(match.group(1)):
        return command, ""
    note = f"{match.group(1)} unreachable here: ran `pip install {torch_spec}` (the Makefile's CPU torch) instead"
    return TORCH_CPU_INDEX.sub(f"pip install {torch_spec}", command), note


def _action_of(step: Step) -> str:
    return step.uses.split("@")[0]


def stand_in(step: Step, python: str) -> str:
    if step.uses.startswith("image:"):
        return STAND_INS["actions/setup-python"].format(python=python) + " (for the container image)"
    return STAND_INS.get(_action_of(step), "nothing: this action has no stand-in here").format(python=python)


@dataclass
class StepResult:
    step: Step
    exit_code: int | None  # None: skipped
    seconds: float
    note: str
    log: Path | None = None


def _base_env(python_bin: Path) -> dict[str, str]:
    """This machine's environment without anything that would leak the developer's setup
    (an active venv, the project's model cache, PYTHONPATH) into the job."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "GITHUB_", "GITLAB_", "CI_", "RUNNER_", "ROBUSTCLI_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k != "CI"}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not p.rstrip("/").endswith(".venv/bin")]
    env["PATH"] = os.pathsep.join([str(python_bin)] + path)
    return env


def _clone(repo: Path, commit: str, dest: Path) -> None:
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(repo), str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "--quiet", commit], check=True)


def _make_python(python: str, dest: Path) -> Path:
    subprocess.run([python, "-m", "venv", str(dest)], check=True)
    return dest / "bin"


def _run(command: list[str], cwd: Path, env: dict[str, str], log: Path, timeout: float) -> int:
    with log.open("w") as out:
        try:
            return subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=max(timeout, 1.0)).returncode
        except subprocess.TimeoutExpired:
            out.write(f"\n[run_ci_locally] step killed: job time limit ({timeout:.0f} s left) reached\n")
            return 124


def _tail(log: Path, lines: int) -> str:
    text = log.read_text(errors="replace").rstrip().splitlines()
    return "\n".join("    " + line for line in text[-lines:])


def _read_env_file(path: Path) -> dict[str, str]:
    """`NAME=value` lines a step wrote to $GITHUB_ENV (the heredoc form is not needed here)."""
    if not path.exists():
        return {}
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def break_first_gate(job: CiJob, workspace: Path) -> str:
    """Raise the first accuracy gate of the config the `robust eval` step names to 1.0 (which the
    built-in models do not reach), so the failing-gate path runs; returns what was changed."""
    gate = next(s for s in job.steps if s.is_gate)
    config = workspace / re.search(r"robust eval (\S+)", gate.command).group(1)
    text = config.read_text()
    match = re.search(r"(\w*accuracy >= )([0-9.]+)", text)
    if match is None:
        raise ValueError(f"{config.name}: no accuracy gate to break")
    config.write_text(text[: match.start(2)] + "1.0" + text[match.end(2):])
    return f"{config.name}: `{match.group(0)}` raised to `{match.group(1)}1.0`"


def run_job(job: CiJob, repo: Path, commit: str, work: Path, python: str, tail: int,
            torch_spec: str, break_gate: bool = False) -> tuple[list[StepResult], Path, str]:
    """Run the job's shell steps in a fresh clone; return the results, the clone and the step
    summary (GitHub) that the steps wrote."""
    workspace = work / "workspace"
    runner_temp = work / "runner-temp"
    runner_temp.mkdir(parents=True)
    _clone(repo, commit, workspace)
    if break_gate:
        print(f"[{job.platform}] failing-gate run: {break_first_gate(job, workspace)}", flush=True)
    python_bin = _make_python(python, work / "python")
    env = _base_env(python_bin)
    env["CI"] = "true"
    summary_parts: list[str] = []
    context: dict[str, str] = {}
    if job.platform == "github":
        context = {"github.workspace": str(workspace), "runner.os": "Linux", "runner.temp": str(runner_temp),
                   "github.sha": commit, "github.job": job.name}
        env.update({"GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(workspace), "GITHUB_SHA": commit,
                    "GITHUB_JOB": job.name, "GITHUB_REF": "refs/heads/main", "GITHUB_REPOSITORY": "local/robustcli",
                    "GITHUB_EVENT_NAME": "push", "GITHUB_RUN_ID": "1", "RUNNER_OS": "Linux",
                    "RUNNER_TEMP": str(runner_temp)})
        env.update({k: expand_github(v, context) for k, v in job.env.items()})
    else:
        env.update({"GITLAB_CI": "true", "CI_PROJECT_DIR": str(workspace), "CI_BUILDS_DIR": str(work),
                    "CI_COMMIT_SHA": commit, "CI_COMMIT_REF_NAME": "main", "CI_JOB_NAME": job.name,
                    "CI_PROJECT_NAME": "robustcli", "CI_PIPELINE_SOURCE": "push", "CI_JOB_STAGE": "test"})
        for k, v in job.env.items():
            env[k] = expand_gitlab(v, env)
    results: list[StepResult] = []
    failed = False
    started = time.monotonic()
    for index, step in enumerate(job.steps, 1):
        if step.kind == "uses":
            note = f"stands in: {stand_in(step, python)}"
            print(f"[{job.platform} {index}] {step.name}: {note}", flush=True)
            results.append(StepResult(step, None, 0.0, note))
            continue
        if failed and not (job.platform == "github" and step.runs_after_failure):
            results.append(StepResult(step, None, 0.0, "not run: an earlier step failed"))
            continue
        log = work / f"step-{index}.log"
        step_env = dict(env)
        command_text, substituted = local_command(step.command, torch_spec)
        if substituted:
            print(f"[{job.platform} {index}] {substituted}", flush=True)
        if job.platform == "github":
            summary = runner_temp / f"step-summary-{index}.md"
            summary.touch()
            github_env = runner_temp / f"env-{index}"
            step_env.update({"GITHUB_STEP_SUMMARY": str(summary), "GITHUB_ENV": str(github_env),
                             "GITHUB_OUTPUT": str(runner_temp / f"output-{index}"),
                             "GITHUB_PATH": str(runner_temp / f"path-{index}")})
            script = runner_temp / f"step-{index}.sh"
            script.write_text(expand_github(command_text, context))
            command = ["bash", "-e", str(script)]  # GitHub's default `shell` on Linux: bash -e {0}
        else:
            command = ["bash", "-e", "-c", command_text]
        print(f"[{job.platform} {index}] {step.name}: running ...", flush=True)
        t0 = time.monotonic()
        code = _run(command, workspace, step_env, log, job.timeout_s - (t0 - started))
        seconds = time.monotonic() - t0
        if job.platform == "github":
            summary_parts.append(summary.read_text())
            env.update(_read_env_file(github_env))
            added_path = runner_temp / f"path-{index}"
            if added_path.exists():  # $GITHUB_PATH: folders put first on PATH for the later steps
                folders = [line for line in added_path.read_text().splitlines() if line.strip()]
                env["PATH"] = os.pathsep.join(list(reversed(folders)) + [env["PATH"]])
        print(f"[{job.platform} {index}] exit {code} after {seconds:.0f} s; last lines of its output:\n{_tail(log, tail)}", flush=True)
        results.append(StepResult(step, code, seconds, substituted or "", log))
        failed = failed or code != 0
    return results, workspace, "".join(summary_parts)


def check_job(job: CiJob, results: list[StepResult], workspace: Path, summary: str, expect_gate_exit: int) -> list[str]:
    """What the job promises, checked after it ran: one line per problem (empty: all hold)."""
    problems: list[str] = []
    gate_results = [r for r in results if r.step.is_gate]
    if not gate_results:
        problems.append("no step runs `robust eval`")
    for r in gate_results:
        if r.exit_code != expect_gate_exit:
            problems.append(f"`robust eval` step exited {r.exit_code}, expected {expect_gate_exit}")
        if job.platform == "github" and r.exit_code == 1 and r.log is not None \
                and "::error title=robust eval gate failed" not in r.log.read_text(errors="replace"):
            problems.append("a gate failed but the step printed no `::error` annotation")
    for r in results:
        if r.step.kind == "run" and not r.step.is_gate and r.exit_code != 0:
            problems.append(f"step {r.step.name!r} exited {r.exit_code}")
    for rel in job.artifacts + [p for p in job.junit if p not in job.artifacts]:
        path = workspace / rel
        if not path.is_file():
            problems.append(f"artifact {rel} was not written")
        elif path.stat().st_size == 0:
            problems.append(f"artifact {rel} is empty")
    for rel in [c for c in job.caches if c not in job.pip_caches]:
        path = workspace / rel
        if not path.is_dir() or not any(path.iterdir()):
            problems.append(f"cache path {rel} is missing or empty after the job: the cache would save nothing")
    if job.platform == "github":
        markdown = next((workspace / p for p in job.artifacts if p.endswith(".md")), None)
        if markdown is None or not markdown.is_file():
            problems.append("no Markdown report to compare with the step summary")
        elif markdown.read_text().strip() not in summary:
            problems.append("$GITHUB_STEP_SUMMARY did not receive the Markdown report")
    return problems


def step_table(job: CiJob, results: list[StepResult]) -> str:
    rows = [f"| # | {job.platform} step | exit | wall s | note |", "| --- | --- | --- | --- | --- |"]
    for i, r in enumerate(results, 1):
        code = "skipped" if r.exit_code is None else str(r.exit_code)
        name = r.step.name.replace("|", "\\|")
        rows.append(f"| {i} | {name} | {code} | {r.seconds:.0f} | {r.note.replace('|', '/')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["github", "gitlab"], help="run one platform's job")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders (printed)")
    parser.add_argument("--python", default="python3.11", help="the Python that stands in for setup-python / image")
    parser.add_argument("--expect-gate-exit", type=int, default=None,
                        help="exit code the `robust eval` step must have (default 0: the shipped gates "
                             "hold; 1 with --break-gate)")
    parser.add_argument("--break-gate", action="store_true",
                        help="raise the config's first accuracy gate to 1.0 in the clone: the failing-gate "
                             "path (exit 1, `::error` annotation, reports still written)")
    parser.add_argument("--tail", type=int, default=6, help="lines of each step's output to print")
    args = parser.parse_args(argv)
    if args.expect_gate_exit is None:
        args.expect_gate_exit = 1 if args.break_gate else 0

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    print(f"commit {commit}" + (" (uncommitted changes are NOT in the clone)" if dirty else ""), flush=True)
    jobs = []
    if args.only in (None, "github"):
        jobs.append(load_github_job())
    if args.only in (None, "gitlab") and GITLAB_FILE.exists():
        jobs.append(load_gitlab_job())
    all_problems: list[str] = []
    tables: list[str] = []
    for job in jobs:
        work = Path(tempfile.mkdtemp(prefix=f"ci-{job.platform}-"))
        print(f"== {job.platform} job {job.name!r} in {work}", flush=True)
        try:
            results, workspace, summary = run_job(job, ROOT, commit, work, args.python, args.tail, makefile_torch(),
                                                break_gate=args.break_gate)
            problems = check_job(job, results, workspace, summary, args.expect_gate_exit)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        tables.append(step_table(job, results))
        all_problems += [f"{job.platform}: {p}" for p in problems]
        print(tables[-1], flush=True)
        held = ["every artifact written", f"`robust eval` exited {args.expect_gate_exit}"]
        held.append("every cache path filled" + (f" (not checked: pip's {', '.join(job.pip_caches)})" if job.pip_caches else ""))
        if job.platform == "github":
            held.append("the step summary has the Markdown report")
            if args.expect_gate_exit == 1:
                held.append("the `::error` annotation was printed")
        print(f"{job.platform} checks: " + ("all hold: " + ", ".join(held) if not problems else "; ".join(problems)),
              flush=True)
    print("\n\n".join(tables))
    for p in all_problems:
        print(f"FAILED: {p}")
    return 1 if all_problems else 0


if __name__ == "__main__":
    sys.exit(main())
