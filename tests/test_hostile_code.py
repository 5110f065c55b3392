"""Code execution from data files: refused unless the user opts in, and the payload never runs.

Each payload creates a marker file when unpickled (or a factory/module when imported or called);
every case asserts the one-line refusal (exit 2) and that the marker is absent. The `allow_pickle`
cases show the payloads are real: with the opt-in the same file does run its code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hostile_files import (
    Payload,
    digits_mlp_state,
    exported,
    one_error_line,
    pt2_extra_entry,
    pt2_opaque_constant,
    pt2_pickled_sample_inputs,
    pt2_pickled_weight,
    safetensors_model,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clean_pt2(tmp_path_factory) -> Path:
    return exported(tmp_path_factory.mktemp("pt2") / "clean.pt2")


PT2_PAYLOADS = {
    "pickled-weight": pt2_pickled_weight,
    "opaque-constant": pt2_opaque_constant,
    "pickled-sample-inputs": pt2_pickled_sample_inputs,
}


@pytest.mark.parametrize("kind", sorted(PT2_PAYLOADS))
@pytest.mark.parametrize("command", ["attack", "certify", "eval", "distill"])
def test_pt2_payload_is_refused_by_every_command(tmp_path, run_cli, clean_pt2, kind, command):
    marker = tmp_path / "RAN"
    model = PT2_PAYLOADS[kind](clean_pt2, tmp_path / "m.pt2", marker)
    if command == "eval":
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"model: {model}\ndata: digits\nn: 4\nchecks:\n  - name: a\n    type: attack\n    attacks: [fgsm]\n"
                       "    eps: 0.1\n    gates: [clean_accuracy >= 0]\n")
        args = ["eval", cfg, "--json", tmp_path / "r.json"]
    elif command == "distill":
        args = ["distill", "--data", "digits", "--teacher", model, "--epochs", "1", "--train-n", "8",
                "--out", tmp_path / "s.safetensors"]
    else:
        args = [command, "--model", model, "--data", "digits", "--n", "4", "--json", tmp_path / "r.json"]
    line = one_error_line(run_cli(*args))
    assert "--allow-pickle" in line and "arbitrary code" in line
    assert not marker.exists()
    assert not (tmp_path / "r.json").exists()


def test_pt2_native_code_entry_is_refused(tmp_path, run_cli, clean_pt2):
    model = pt2_extra_entry(clean_pt2, tmp_path / "aoti.pt2", "data/aotinductor/model/model.so", b"\x7fELF")
    line = one_error_line(run_cli("attack", "--model", model, "--data", "digits", "--n", "4"))
    assert "aotinductor" in line


def test_pt2_payload_runs_only_with_allow_pickle(tmp_path, clean_pt2):
    """The refused payloads are real: the opt-in lets torch unpickle them (the marker appears)."""
    from robustcli.core.errors import InputError
    from robustcli.models import load_model

    marker = tmp_path / "RAN"
    model = pt2_pickled_weight(clean_pt2, tmp_path / "m.pt2", marker)
    with pytest.raises(InputError):  # the payload is not a usable weight, but it ran
        load_model(str(model), allow_pickle=True)
    assert marker.exists()


def test_clean_pt2_still_loads(run_cli, clean_pt2):
    r = run_cli("attack", "--model", clean_pt2, "--data", "digits", "--n", "4", "--attack", "fgsm")
    assert r.exit_code == 0, r.output


def test_pickled_pt_is_refused_and_allow_pickle_gets_its_chance(tmp_path, run_cli):
    marker = tmp_path / "RAN"
    path = tmp_path / "evil.pt"
    torch.save({"w": Payload(marker)}, path)
    line = one_error_line(run_cli("attack", "--model", path, "--data", "digits", "--n", "4"))
    assert "--allow-pickle" in line and "weights_only" not in line
    assert not marker.exists()
    # With the opt-in our warning shows and the unpickled dict is refused as not a model.
    r = run_cli("attack", "--model", path, "--data", "digits", "--n", "4", "--allow-pickle")
    assert r.exit_code == 2 and "warning: unpickling evil.pt" in r.stderr
    assert marker.exists()


@pytest.fixture
def hostile_module(tmp_path, monkeypatch):
    """An importable module whose import and every function leave markers."""
    name = f"hostile_{os.getpid()}_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        import sys
        open({str(tmp_path / 'IMPORTED')!r}, 'w')
        def factory():
            open({str(tmp_path / 'CALLED')!r}, 'w')
            from robustcli.archs import build_arch
            return build_arch('digits-mlp')
        def exits():
            sys.exit(0)
        def raises():
            raise RuntimeError('boom\\nsecond line')
        def interrupts():
            raise KeyboardInterrupt
        def not_a_module():
            return 42
        constant = 7
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


@pytest.mark.parametrize("factory", ["factory", "exits", "raises"])
def test_metadata_cannot_choose_code(tmp_path, run_cli, hostile_module, factory):
    model = safetensors_model(tmp_path / "m.safetensors", {"robustcli.arch": f"{hostile_module}:{factory}"})
    line = one_error_line(run_cli("attack", "--model", model, "--data", "digits", "--n", "4"))
    assert "not built-in" in line and f"--arch {hostile_module}:{factory}" in line
    assert not (tmp_path / "IMPORTED").exists() and not (tmp_path / "CALLED").exists()


@pytest.mark.parametrize("name", ["sys:exit", "os:getcwd", "builtins:exit"])
def test_metadata_naming_stdlib_functions_is_refused(tmp_path, run_cli, name):
    model = safetensors_model(tmp_path / "m.safetensors", {"robustcli.arch": name})
    assert "not built-in" in one_error_line(run_cli("attack", "--model", model, "--data", "digits", "--n", "4"))


def test_user_passed_factory_still_runs(tmp_path, run_cli, hostile_module):
    """`--arch module:factory` is the user's own choice, so it is honoured."""
    path = tmp_path / "w.pt"
    torch.save(digits_mlp_state(), path)
    r = run_cli("attack", "--model", path, "--arch", f"{hostile_module}:factory", "--data", "digits", "--n", "4",
                "--attack", "fgsm")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "CALLED").exists()


@pytest.mark.parametrize(
    "factory, needle",
    [("exits", "SystemExit"), ("raises", "RuntimeError: boom"), ("interrupts", "KeyboardInterrupt"),
     ("not_a_module", "not a torch.nn.Module"), ("constant", "not a function"), ("missing", "cannot import")],
)
def test_user_factory_failures_are_one_line(tmp_path, run_cli, hostile_module, factory, needle):
    path = tmp_path / "w.pt"
    torch.save(digits_mlp_state(), path)
    line = one_error_line(run_cli("attack", "--model", path, "--arch", f"{hostile_module}:{factory}",
                                  "--data", "digits", "--n", "4"))
    assert needle in line


def test_moe_models_load_without_importing_by_name(tmp_path, run_cli):
    """Trainers save MoE models under `robustcli.defenses.moe:...`; that name resolves as built-in."""
    from robustcli.archs import build_arch
    from robustcli.models import load_model

    arch = "robustcli.defenses.moe:digits_moe_cnn_e4_k2"
    state = build_arch("digits_moe_cnn_e4_k2").state_dict()
    path = tmp_path / "moe.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"robustcli.arch": arch})
    assert load_model(str(path)).arch == arch
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(bad),
              metadata={"robustcli.arch": "robustcli.defenses.moe:digits_moe_cnn_e3_k2"})
    assert "split" in one_error_line(run_cli("attack", "--model", bad, "--data", "digits", "--n", "4"))


def _cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_python_m_from_a_hostile_folder_runs_nothing_from_it(tmp_path):
    """Shadowing modules (yaml.py, numpy.py, click.py) and a model naming a local factory: nothing runs."""
    for module in ("yaml", "numpy", "click", "rich", "evil"):
        (tmp_path / f"{module}.py").write_text(f"open({str(tmp_path / ('RAN_' + module))!r}, 'w')\ndef f():\n    pass\n")
    safetensors_model(tmp_path / "m.safetensors", {"robustcli.arch": "evil:f"})
    r = subprocess.run(
        [sys.executable, "-m", "robustcli", "attack", "--model", "m.safetensors", "--data", "digits", "--n", "4"],
        cwd=tmp_path, env=_cli_env(), capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "not built-in" in r.stderr.strip().splitlines()[-1]
    assert not list(tmp_path.glob("RAN_*"))


@pytest.mark.slow
def test_launcher_drops_the_current_folder(tmp_path):
    """`python -m robustcli.launch` (torchrun) also ignores modules in the current folder."""
    (tmp_path / "argparse.py").write_text(f"open({str(tmp_path / 'RAN')!r}, 'w')\n")
    r = subprocess.run([sys.executable, "-m", "robustcli.launch"], cwd=tmp_path, env=_cli_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "usage" in r.stderr
    assert not (tmp_path / "RAN").exists()
