"""Options: one request per engine call, config keys spelled like the flags, old names with a note."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from robustcli.core.errors import InputError
from robustcli.evalconfig import load_eval_config
from robustcli.requests import AttackRequest, CertifyRequest, OptionError, check_eps

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "robustcli"


# --- the request objects own the rules ------------------------------------------------------


def test_linf_rule_lives_in_the_request():
    with pytest.raises(OptionError, match="exceeds 1") as e:
        AttackRequest(attack=("pgd",), eps=(1.5,))
    assert e.value.option == "eps" and str(e.value).startswith("--eps 1.5")
    with pytest.raises(OptionError, match="exceeds 1"):
        CertifyRequest(eps=(2.0,))
    CertifyRequest(eps=(2.0,), norm="l2")  # an L2 budget may exceed 1
    with pytest.raises(OptionError, match="must be >= 0"):
        check_eps((-0.1,), "l2")


def test_l2_only_attacks_take_eps_as_their_budget():
    r = AttackRequest(attack=("cw",), eps=(4.0,))  # not refused as "Linf eps 4 exceeds 1"
    b = r.budgets()
    assert b.eps["l2"] == (4.0,) and b.source["l2"] == "--eps"
    mixed = AttackRequest(attack=("pgd", "cw"), eps=(0.1,)).budgets()
    assert mixed.eps["linf"] == (0.1,) and mixed.source["linf"] == "--eps"
    assert mixed.source["l2"] == "default" and mixed.eps["l2"] == (0.5, 1.0, 2.0)
    with pytest.raises(OptionError, match="exceeds 1"):
        AttackRequest(attack=("pgd", "cw"), eps=(4.0,))  # with a Linf attack it is a Linf budget


def test_request_counts_and_backend():
    with pytest.raises(OptionError, match="--steps must be >= 1"):
        AttackRequest(steps=0)
    with pytest.raises(OptionError, match="foolbox has no square"):
        AttackRequest(attack=("square",), backend="foolbox")
    with pytest.raises(OptionError, match="--pgd-steps must be >= 1"):
        CertifyRequest(pgd_steps=0)
    assert AttackRequest().attacks == ("pgd",) and AttackRequest(suite="strong").attacks == ()


def test_cli_and_eval_give_the_same_eps_message(run_cli, tmp_path):
    r = run_cli("attack", "--model", "digits-mlp", "--eps", "1.5", "--n", "5")
    assert r.exit_code == 2
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: digits-mlp\nchecks:\n  - type: attack\n    attack: pgd\n    eps: 1.5\n    gates: [clean_accuracy > 0]\n")
    with pytest.raises(InputError) as e:
        load_eval_config(cfg)
    assert "1.5 exceeds 1, the whole [0, 1] pixel range" in r.stderr
    assert "1.5 exceeds 1, the whole [0, 1] pixel range" in str(e.value) and ":5:" in str(e.value)


def test_cw_alone_accepts_eps_4_and_table_shows_budget_source(run_cli, tmp_path):
    out = tmp_path / "r.json"
    r = run_cli("attack", "--model", "digits-mlp", "--attack", "cw", "--eps", "4", "--n", "4", "--steps", "2",
                "--search-steps", "1", "--json", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["results"]
    assert {(row["norm"], row["eps"], row["eps_source"]) for row in rows} == {("l2", 4.0, "--eps")}
    assert "budget" in r.stdout


def test_mixed_norms_show_default_l2_budget(run_cli, tmp_path):
    out = tmp_path / "r.json"
    r = run_cli("attack", "--model", "digits-mlp", "--attack", "fgsm", "cw", "--eps", "0.1", "--n", "4", "--steps", "2",
                "--search-steps", "1", "--json", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["results"]
    sources = {(row["attack"], row["eps_source"]) for row in rows}
    assert ("fgsm", "--eps") in sources and ("cw", "default") in sources
    assert "note: cw (l2) run at the default l2 budgets 0.5 1 2; set --eps-l2" in r.stderr
    assert "default" in r.stdout


# --- config keys are the long flag names; old spellings read with a note -----------------------


def test_command_config_keys_are_flag_names(run_cli, tmp_path):
    out = tmp_path / "r.json"
    cfg = tmp_path / "a.yaml"
    cfg.write_text(f"model: digits-mlp\nattack: fgsm\neps: 0.1\nn: 5\njson: {out}\n")
    r = run_cli("attack", "--config", cfg)
    assert r.exit_code == 0, r.output
    assert "deprecated" not in r.stderr and json.loads(out.read_text())["n"] == 5
    old = tmp_path / "old.yaml"
    out2 = tmp_path / "r2.json"
    old.write_text(f"model: digits-mlp\nattack-names: fgsm\neps: 0.1\nn: 5\njson-path: {out2}\nbatch_size: 8\n")
    r = run_cli("attack", "--config", old)
    assert r.exit_code == 0, r.output
    notes = [line for line in r.stderr.splitlines() if "deprecated" in line]
    assert len(notes) == 3, r.stderr
    assert any("'attack-names' is deprecated; write 'attack'" in n for n in notes)
    assert any("'json-path' is deprecated; write 'json'" in n for n in notes)
    assert any("'batch_size' is deprecated; write 'batch-size'" in n for n in notes)
    assert json.loads(out2.read_text())["n"] == 5


def test_eval_config_keys_are_flag_names(tmp_path, capsys):
    new = tmp_path / "new.yaml"
    new.write_text(
        "model: digits-mlp\nbatch-size: 64\nchecks:\n"
        "  - type: attack\n    attack: [fgsm, pgd]\n    eps: 0.1\n    gates: [clean_accuracy > 0]\n"
        "  - type: certify\n    method: ibp\n    pgd-steps: 3\n    eps: 0.01\n    gates: [clean_accuracy > 0]\n"
    )
    config = load_eval_config(new)
    assert "deprecated" not in capsys.readouterr().err
    assert config.batch_size == 64
    assert config.checks[0].options["attack"] == ("fgsm", "pgd") and config.checks[1].options["pgd-steps"] == 3
    old = tmp_path / "old.yaml"
    old.write_text(
        "model: digits-mlp\nbatch_size: 64\nchecks:\n"
        "  - type: attack\n    attacks: [fgsm, pgd]\n    eps: 0.1\n    gates: [clean_accuracy > 0]\n"
        "  - type: certify\n    methods: ibp\n    pgd_steps: 3\n    eps: 0.01\n    gates: [clean_accuracy > 0]\n"
    )
    same = load_eval_config(old)
    err = capsys.readouterr().err
    assert [c.options for c in same.checks] == [c.options for c in config.checks] and same.batch_size == 64
    assert f"{old}:5: key 'attacks' is deprecated; write 'attack'" in err
    assert f"{old}:9: key 'methods' is deprecated; write 'method'" in err
    assert "'pgd_steps' is deprecated; write 'pgd-steps'" in err and "'batch_size' is deprecated" in err
    both = tmp_path / "both.yaml"
    both.write_text("model: digits-mlp\nchecks:\n  - type: attack\n    attack: pgd\n    attacks: pgd\n    eps: 0.1\n    gates: [clean_accuracy > 0]\n")
    with pytest.raises(InputError, match="same key"):
        load_eval_config(both)


def test_old_flag_spellings_still_work_with_a_note(run_cli):
    from click.testing import CliRunner

    from robustcli.cli import cli

    result = CliRunner().invoke(cli, ["train", "--help"])
    assert "--n-train" in result.output and "--train-n" not in result.output
    r = run_cli("attack", "--model", "digits-mlp", "--attack", "fgsm", "--eps", "0.1", "--num-points", "5")
    assert r.exit_code == 0, r.output
    assert "deprecated" not in r.stderr and "(n=5)" in r.stdout
    # parsed (with a note) before the bad --out is refused
    r = run_cli("train", "--data", "digits", "--train-n=5", "--eval-n", "3", "--out", "model.pt")
    assert r.exit_code == 2 and "--out model.pt" in r.stderr
    assert "note: --train-n is deprecated; write --n-train" in r.stderr
    assert "note: --eval-n is deprecated; write --num-points" in r.stderr


# --- one declaration, no command importing another --------------------------------------------


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_commands_never_import_each_other_and_checks_no_command():
    commands = {f"robustcli.commands.{p.stem}" for p in (PACKAGE / "commands").glob("*.py") if not p.stem.startswith("_")}
    for path in (PACKAGE / "commands").glob("*.py"):
        wrong = {m for m in _imports(path) if m in commands and m != f"robustcli.commands.{path.stem}"}
        assert not wrong, f"{path.name} imports {wrong}"
    for path in (PACKAGE / "checks").glob("*.py"):
        wrong = {m for m in _imports(path) if m.startswith("robustcli.commands")}
        assert not wrong, f"checks/{path.name} imports {wrong}"


@pytest.mark.parametrize("flag", ['"--device"', '"--seed"', '"--data"', '"--eps"'])
def test_shared_options_are_declared_once(flag):
    hits = [p for p in PACKAGE.rglob("*.py") for line in p.read_text().splitlines() if flag in line and "option(" in line]
    assert len(hits) == 1, hits
