"""Shared fixtures: a private model cache per test session, tiny trained models, a CLI runner."""

from __future__ import annotations

import os

import pytest
import torch
from click.testing import CliRunner

# Built-in models are trained once per test session into a private cache (not the user's).
if "ROBUSTCLI_TEST_CACHE" not in os.environ:
    import tempfile

    os.environ["ROBUSTCLI_TEST_CACHE"] = tempfile.mkdtemp(prefix="robustcli-cache-")
os.environ["ROBUSTCLI_CACHE"] = os.environ["ROBUSTCLI_TEST_CACHE"]
# No test may download: the official MNIST is never fetched here (tests use mnist-5k, digits or
# tiny files they write). Slow cross-checks on the official data: ROBUSTCLI_OFFLINE=0 pytest -m slow.
os.environ.setdefault("ROBUSTCLI_OFFLINE", "1")
# One thread: the test models are tiny, and a second thread costs more than it gains (measured 3-4x
# more CPU time per test on the 2-core CI machine).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_mlp():
    """The built-in digits-mlp (trained on first use: a few seconds)."""
    from robustcli.models import load_model

    return load_model("digits-mlp", progress=False).module


@pytest.fixture(scope="session")
def digits_test():
    from robustcli.data import load_dataset

    return load_dataset("digits", "test")


@pytest.fixture
def run_cli():
    """Invoke `robust ARGS...`; returns the Click result (exit_code, output, stderr)."""
    from robustcli.cli import cli

    def run(*args: str):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return run
