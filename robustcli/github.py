"""GitHub Actions integration of `robust eval`: error annotations and the job summary.

When the `GITHUB_ACTIONS` environment variable is `true` (set by every Actions runner), each
failing gate is printed as a workflow command `::error title=...::...` on stdout, which GitHub
shows as an annotation on the run and the pull request, and the Markdown report is appended to
the file named by `GITHUB_STEP_SUMMARY`, which GitHub renders on the run's summary page. Both
formats are GitHub's ("Workflow commands for GitHub Actions": `::error`, escaping of `%`, CR, LF;
"Adding a job summary"). Elsewhere nothing changes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping


def on_github_actions(env: Mapping[str, str] | None = None) -> bool:
    return (os.environ if env is None else env).get("GITHUB_ACTIONS") == "true"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def error_annotations(report: dict) -> list[str]:
    """One `::error` line per failing gate, naming the check, the gate and the measured value."""
    lines = []
    for check in report["checks"]:
        for g in check["gates"]:
            if g["passed"]:
                continue
            measured = "not measured" if g["value"] is None else f"measured {g['value']:.4g}"
            title = _escape_property(f"robust eval gate failed: {check['name']}")
            message = _escape_data(f"gate {g['gate']} of check {check['name']} failed ({measured}): {g['message']}")
            lines.append(f"::error title={title}::{message}")
    return lines


def append_step_summary(markdown: str, env: Mapping[str, str] | None = None) -> bool:
    """Append to $GITHUB_STEP_SUMMARY if set; returns whether it did."""
    target = (os.environ if env is None else env).get("GITHUB_STEP_SUMMARY")
    if not target:
        return False
    with Path(target).open("a", encoding="utf-8") as f:  # appended: other steps share the file
        f.write(markdown if markdown.endswith("\n") else markdown + "\n")
    return True
