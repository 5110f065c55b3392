"""A CI gate can never pass by accident: `robust eval` exits 0 only when every check ran, every
gate was evaluated and every report was written. Model code that calls sys.exit(0), raises
KeyboardInterrupt or anything else mid-check is an error (exit 2) and no report claims a pass.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap

import pytest
import torch

from hostile_files import one_error_line

MODULE = textwrap.dedent("""
    import sys
    import torch
    from torch import nn
    from robustcli.archs import build_arch

    class Hostile(nn.Module):
        '''digits-mlp whose forward misbehaves from call number `after` on.'''
        def __init__(self, action, after):
            super().__init__()
            self.inner, self.action, self.after, self.calls = build_arch('digits-mlp'), action, after, 0
        def forward(self, x):
            self.calls += 1
            if self.calls > self.after:
                if self.action == 'exit0':
                    sys.exit(0)
                if self.action == 'interrupt':
                    raise KeyboardInterrupt
                if self.action == 'raise':
                    raise RuntimeError('model failed mid-check')
                if self.action == 'nan':
                    return torch.full((x.shape[0], 10), float('nan'))
            return self.inner(x)

    def exit0_at_once(): return Hostile('exit0', 0)
    def exit0_in_check(): return Hostile('exit0', 2)
    def interrupt_in_check(): return Hostile('interrupt', 2)
    def raise_in_check(): return Hostile('raise', 2)
    def nan_in_check(): return Hostile('nan', 2)
    def fine(): return Hostile('none', 0)
    def factory_exits(): sys.exit(0)
""")


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    name = f"hostile_eval_{os.getpid()}_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    torch.manual_seed(0)
    torch.save(module.fine().state_dict(), tmp_path / "w.pt")
    yield name
    sys.modules.pop(name, None)


def _config(tmp_path, arch: str, gate: str = "clean_accuracy >= 0") -> str:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model: {tmp_path / 'w.pt'}\narch: {arch}\ndata: digits\nn: 8\nchecks:\n"
        f"  - name: a\n    type: attack\n    attacks: [fgsm]\n    eps: 0.1\n    gates: ['{gate}']\n"
    )
    return str(cfg)


def _reports(tmp_path) -> list[str]:
    return ["--json", str(tmp_path / "r.json"), "--junit", str(tmp_path / "r.xml"), "--markdown", str(tmp_path / "r.md")]


def _no_reports(tmp_path) -> bool:
    return not any((tmp_path / f"r.{s}").exists() for s in ("json", "xml", "md"))


@pytest.mark.parametrize(
    "factory, needle",
    [
        ("exit0_at_once", "SystemExit"),
        ("exit0_in_check", "did not finish: SystemExit"),
        ("interrupt_in_check", "did not finish: KeyboardInterrupt"),
        ("raise_in_check", "did not finish: RuntimeError: model failed mid-check"),
        ("factory_exits", "raised SystemExit"),
    ],
)
def test_model_code_cannot_make_eval_pass(run_cli, tmp_path, hostile, factory, needle):
    r = run_cli("eval", _config(tmp_path, f"{hostile}:{factory}"), *_reports(tmp_path))
    assert needle in one_error_line(r)
    assert _no_reports(tmp_path)


def test_nan_logits_mid_check_do_not_pass_a_gate(run_cli, tmp_path, hostile):
    """NaN logits after the clean check may not read as a robust accuracy that passes."""
    r = run_cli("eval", _config(tmp_path, f"{hostile}:nan_in_check", "robust_accuracy >= 0.5 at eps=0.1"), *_reports(tmp_path))
    assert r.exit_code != 0, r.output


def test_metadata_cannot_exit_zero(run_cli, tmp_path):
    """The reported exploit: a model file whose metadata names sys:exit made eval exit 0 with no report."""
    from hostile_files import safetensors_model

    model = safetensors_model(tmp_path / "m.safetensors", {"robustcli.arch": "sys:exit"})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {model}\ndata: digits\nn: 8\nchecks:\n  - name: a\n    type: attack\n    attacks: [fgsm]\n"
                   "    eps: 0.1\n    gates: ['clean_accuracy >= 0.99']\n")
    assert "not built-in" in one_error_line(run_cli("eval", cfg, *_reports(tmp_path)))
    assert _no_reports(tmp_path)


def test_a_report_that_cannot_be_written_is_an_error(run_cli, tmp_path, hostile):
    loop = tmp_path / "loop.xml"
    os.symlink(loop, loop)
    r = run_cli("eval", _config(tmp_path, f"{hostile}:fine"), "--json", tmp_path / "r.json", "--junit", loop)
    assert "symlink loop" in one_error_line(r)


def test_a_finished_run_still_passes_and_fails_normally(run_cli, tmp_path, hostile):
    r = run_cli("eval", _config(tmp_path, f"{hostile}:fine"), *_reports(tmp_path))
    assert r.exit_code == 0, r.output
    assert not _no_reports(tmp_path)
    r = run_cli("eval", _config(tmp_path, f"{hostile}:fine", "clean_accuracy >= 1.01"), *_reports(tmp_path))
    one_error_line(r, code=1)


def test_eval_config_settles_ambiguous_pixels(run_cli, tmp_path):
    """The config keys pixel-scale and classes do what --pixel-scale and --classes do."""
    import json

    import numpy as np

    np.savez(tmp_path / "b.npz", x=np.zeros((4, 1, 8, 8), np.uint8), y=np.arange(4))
    body = "model: digits-mlp\ndata: b.npz\nchecks:\n  - type: attack\n    attacks: [fgsm]\n    eps: 0.1\n    gates: ['clean_accuracy >= 0']\n"
    (tmp_path / "c.yaml").write_text(body)
    assert "pixel-scale" in one_error_line(run_cli("eval", tmp_path / "c.yaml"))
    (tmp_path / "c.yaml").write_text("pixel-scale: 255\n" + body)
    r = run_cli("eval", tmp_path / "c.yaml", "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "r.json").read_text())["data_format"] == {"pixel_scale": 255}
