"""Importing auto_LiRPA leaves the process's warning filters and logging as they were (the library
calls `warnings.simplefilter("once")` and `logging.basicConfig(stream=sys.stdout)` on import), so
`robust certify --method crown` prints no torch deprecation warning and no log line on stdout. Run in
a fresh interpreter: the test session may have imported it already."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from robustcli.certify.lirpa import lirpa_available

pytestmark = pytest.mark.skipif(not lirpa_available(), reason="auto_LiRPA not installed")

PROBE = """
import warnings
from robustcli.certify.lirpa_compat import import_auto_lirpa
before = list(warnings.filters)
import_auto_lirpa()
assert warnings.filters == before, warnings.filters[:3]
print("filters kept")
"""


def test_import_keeps_the_warning_filters():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "filters kept" in out.stdout
    assert "DeprecationWarning" not in out.stderr


LOGGING_PROBE = """
import logging
from robustcli.certify.lirpa_compat import import_auto_lirpa
import_auto_lirpa()
assert logging.getLogger().handlers == [], logging.getLogger().handlers
logging.getLogger("auto_LiRPA.utils").error("a failure this tool reports itself")
logging.getLogger("elsewhere").warning("to stderr")
print("logging kept")
"""


def test_import_keeps_logging_off_stdout():
    out = subprocess.run([sys.executable, "-c", LOGGING_PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "logging kept"
    assert "to stderr" in out.stderr and "reports itself" not in out.stderr


def test_certify_crown_prints_no_deprecation_warning(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONWARNINGS", None)
    out = subprocess.run(
        [sys.executable, "-m", "robustcli", "certify", "--model", "digits-mlp", "--eps", "0.01", "--method", "crown",
         "--n", "8", "--json", str(tmp_path / "c.json")],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr, out.stderr
