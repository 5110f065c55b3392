"""What a user meets first: help without a command, table widths, progress totals that add up,
`--arch path/to/file.py:factory`."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from click.testing import CliRunner
from rich.cells import cell_len
from safetensors.torch import save_file
from torch import nn

from robustcli.cli import cli
from robustcli.core import distributed
from robustcli.progress import shows_shard


def test_bare_robust_prints_help_and_exits_0():
    r = CliRunner().invoke(cli, [])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("Usage: ") and "COMMAND" in r.stdout and "attack" in r.stdout and "error" not in r.output
    sub = CliRunner().invoke(cli, ["analyze"])
    assert sub.exit_code == 0 and "scaling" in sub.stdout
    assert CliRunner().invoke(cli, ["no-such-command"]).exit_code == 2  # a wrong command stays an error


def _widths(text: str) -> list[int]:
    return [cell_len(line) for line in text.splitlines()]


@pytest.mark.parametrize(("columns", "width"), [(None, 100), ("120", 120)])
def test_tables_are_100_columns_on_a_pipe_unless_columns_says(columns, width, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    if columns:
        monkeypatch.setenv("COLUMNS", columns)
    r = CliRunner().invoke(cli, ["attack", "--model", "digits-mlp", "--attack", "fgsm", "--eps", "0.1", "--n", "10"])
    assert r.exit_code == 0, r.output
    # the diagnostics table has long cells, so it fills the width it is given, and no more
    assert max(_widths(r.stdout)) == width


@pytest.fixture
def progress_log(monkeypatch):
    """Every progress bar of a run: (description, total, units reported)."""
    log: list[tuple[str, int, int]] = []

    @contextmanager
    def recording(description, total, enabled=True, show=None):
        done = [0]
        yield lambda n=1, **fields: done.__setitem__(0, done[0] + n)
        log.append((description, total, done[0]))

    for module in ("robustcli.commands.attack", "robustcli.commands.eval", "robustcli.commands.analyze"):
        monkeypatch.setattr(f"{module}.progress_bar", recording)
    return log


def test_progress_totals_add_up(run_cli, progress_log, tmp_path):
    r = run_cli("attack", "--model", "digits-mlp", "--attack", "fgsm", "cw", "--eps", "0.05", "0.1", "--n", "12",
                "--steps", "2", "--search-steps", "1")  # fmt: skip
    assert r.exit_code == 0, r.output
    r = run_cli("attack", "--model", "digits-mlp", "--suite", "strong", "--eps", "0.1", "--n", "6", "--queries", "5")
    assert r.exit_code == 0, r.output
    r = run_cli("analyze", "scaling", "--model", "digits-mlp", "--attack", "fgsm", "--n", "20", "--points", "4",
                "--resamples", "0")  # fmt: skip
    assert r.exit_code == 0, r.output
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model: digits-mlp\nn: 10\nchecks:\n"
        "  - type: attack\n    attack: [fgsm, pgd]\n    eps: [0.05, 0.1]\n    steps: 2\n    gates: [clean_accuracy > 0]\n"
        "  - type: strong\n    eps: [0.05, 0.1]\n    steps: 2\n    queries: 5\n    attack: fgsm\n    gates: [clean_accuracy > 0]\n"
        "  - type: scaling\n    attack: fgsm\n    points: 4\n    gates: [gamma > -100]\n"
    )
    r = run_cli("eval", cfg)
    assert r.exit_code in (0, 1), r.output
    names = [d for d, _, _ in progress_log]
    assert names == ["attacking", "strong suite", "scaling", "attack check", "strong check", "scaling check"], names
    for description, total, done in progress_log:
        assert done == total, (description, total, done)
    assert progress_log[0][1] == 12 * 2 + 12  # fgsm at two budgets, cw once for both


def test_the_bar_is_shown_by_a_rank_with_work():
    """A run smaller than a batch per rank leaves rank 0 without points: the first rank that holds
    points shows the bar instead of rank 0 showing 0/0; exactly one rank shows it."""
    for n, batch, world in [(50, 256, 2), (1000, 256, 3), (5, 4, 3), (0, 8, 2)]:
        parts = [distributed.shard(n, batch, rank_=r, world=world) for r in range(world)]
        shown = [r for r, p in enumerate(parts) if shows_shard(p, n)]
        if n:
            assert len(shown) == 1 and parts[shown[0]].stop > parts[shown[0]].start, (n, parts, shown)
        else:  # no points: the main rank shows (here every simulated rank is this main process)
            assert shown == list(range(world))
    assert shows_shard(slice(None), 50) and shows_shard(slice(0, 50), 50)


def test_arch_from_a_python_file(run_cli, tmp_path):
    (tmp_path / "mynet.py").write_text(
        "from torch import nn\n\ndef make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n"
    )
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    r = run_cli("attack", "--model", weights, "--arch", f"{tmp_path / 'mynet.py'}:make", "--data", "digits",
                "--attack", "fgsm", "--eps", "0.1", "--n", "10")  # fmt: skip
    assert r.exit_code == 0, r.output
    r = run_cli("attack", "--model", weights, "--arch", "mynet_not_on_path:make", "--data", "digits", "--n", "10")
    assert r.exit_code == 2
    assert "PYTHONPATH" in r.stderr and "--arch path/to/mynet_not_on_path.py:make" in r.stderr
    r = run_cli("attack", "--model", weights, "--arch", f"{tmp_path / 'missing.py'}:make", "--data", "digits")
    assert r.exit_code == 2 and "no Python file" in r.stderr
    r = run_cli("attack", "--model", weights, "--arch", f"{tmp_path / 'mynet.py'}:other", "--data", "digits")
    assert r.exit_code == 2 and "defines no 'other'" in r.stderr
