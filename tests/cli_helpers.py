"""Assertions on `run_cli` results that several CLI test files share."""

from __future__ import annotations


def only_error_line(result) -> str:
    """The run's whole output is one `error:` line (stdout and stderr together), with exit code 2
    and no traceback; returns that line."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    return lines[0]
