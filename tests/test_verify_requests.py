"""Requests of the property verifier (`certify --spec`, `vnncomp`): the command says a bad value in
one line with exit code 2 before anything is loaded or written, and the verifier gets exactly the
request's options. (Each bad value's `OptionError` is in test_requests.py with the other requests'.)"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from cli_helpers import only_error_line

from robustcli.certify.spec_verify import METHODS, SpecResult, verify_property
from robustcli.requests import OptionError, from_options
from robustcli.verify_requests import SpecRequest, VerifyRequest, VnncompRequest

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_checks_run_in_the_order_the_command_lists_its_options():
    with pytest.raises(OptionError, match="--timeout"):
        VnncompRequest(timeout=-1.0, jobs=0, attack_steps=0)
    with pytest.raises(OptionError, match="--limit"):
        VnncompRequest(limit=0, jobs=0)
    with pytest.raises(OptionError, match="--pgd-steps"):
        SpecRequest(pgd_steps=0, alpha_iterations=0, method=("crown-ibp",))


def test_requests_own_their_defaults():
    assert VnncompRequest().methods == METHODS  # every stage, cheapest first, branch and bound last
    assert VnncompRequest(method=("crown", "attack", "crown")).methods == ("crown", "attack")  # the order given
    assert SpecRequest().methods == METHODS
    assert SpecRequest(method=("bab", "ibp")).methods == ("attack", "ibp", "bab")  # attack first, then by cost
    assert SpecRequest().attack_budget() == VnncompRequest().attack_budget() == (50, 10)
    assert SpecRequest(pgd_steps=7).attack_budget() == (7, 10)
    assert VnncompRequest(attack_restarts=3).attack_budget() == (50, 3)
    # a config's flag names build the same request
    req = from_options(VnncompRequest, {"attack-steps": 5, "bab-split": "relu", "method": ["ibp"], "out": "x.csv"})
    assert req == VnncompRequest(attack_steps=5, bab_split="relu", method=("ibp",))


def test_verifier_options_are_the_verifiers_keywords():
    params = inspect.signature(verify_property).parameters
    for request in (SpecRequest(pgd_steps=3), VnncompRequest(attack_restarts=2, timeout=5.0)):
        options = request.verifier_options()
        assert set(options) <= set(params), set(options) - set(params)
        assert (options["attack_steps"], options["attack_restarts"]) == request.attack_budget()
        assert options["timeout"] == request.timeout and options["methods"] == request.methods


def test_click_defaults_are_the_requests():
    from robustcli.commands import certify, vnncomp

    vnn = {p.name: p.default for p in vnncomp.command.params}
    req = VnncompRequest()
    for name in ("timeout", "limit", "jobs", "attack_steps", "attack_restarts", "alpha_iterations", "bab_split"):
        assert vnn[name] == getattr(req, name), name
    cert = {p.name: p.default for p in certify.command.params}
    assert cert["timeout"] == SpecRequest.timeout and cert["bab_split"] == SpecRequest.bab_split
    assert issubclass(SpecRequest, VerifyRequest) and issubclass(VnncompRequest, VerifyRequest)


@pytest.fixture
def spec_files(tmp_path):
    from onnx_helpers import mlp_onnx, vnnlib_box

    net = mlp_onnx(tmp_path / "net.onnx")
    prop = tmp_path / "p.vnnlib"
    prop.write_text(vnnlib_box([0.0] * 12, [1e-3] * 12, 0, 3, extra_outputs="(assert (<= Y_0 -1000000.0))"))
    (tmp_path / "instances.csv").write_text("net.onnx,p.vnnlib,5\n")
    return net, prop, tmp_path / "instances.csv"


@pytest.mark.parametrize(
    "command, args, words",
    [
        ("vnncomp", ["--timeout", "0"], "--timeout must be > 0, got 0.0"),
        ("vnncomp", ["--limit", "0"], "--limit must be >= 1, got 0"),
        ("vnncomp", ["--jobs", "0"], "--jobs must be >= 1, got 0"),
        ("vnncomp", ["--attack-steps", "0"], "--attack-steps must be >= 1, got 0"),
        ("vnncomp", ["--attack-restarts", "0"], "--attack-restarts must be >= 1, got 0"),
        ("vnncomp", ["--alpha-iterations", "0"], "--alpha-iterations must be >= 1, got 0"),
        ("certify", ["--timeout", "-1"], "--timeout must be > 0, got -1.0"),
        ("certify", ["--pgd-steps", "0"], "--pgd-steps must be >= 1, got 0"),
        ("certify", ["--pgd-restarts", "0"], "--pgd-restarts must be >= 1, got 0"),
        ("certify", ["--alpha-iterations", "0"], "--alpha-iterations must be >= 1, got 0"),
        ("certify", ["--method", "crown-ibp"], "--method crown-ibp is not available with --spec"),
    ],
)
def test_the_command_says_it_in_one_line_and_writes_nothing(run_cli, spec_files, command, args, words):
    net, prop, csv = spec_files
    folder = csv.parent
    outputs = {  # every file or folder the command could write
        "vnncomp": (["--out", folder / "results.csv"], [folder / "results.csv", folder / "results_counterexamples"]),
        "certify": (["--model", net, "--spec", prop, "--counterexample", folder / "p.ce"], [folder / "p.ce"]),
    }
    flags, written = outputs[command]
    first = [csv] if command == "vnncomp" else []
    line = only_error_line(run_cli(command, *first, *flags, "--json", folder / "r.json", *args))
    assert words in line, line
    assert not any(p.exists() for p in [*written, folder / "r.json"])


def test_certify_spec_passes_the_request_to_the_verifier(run_cli, spec_files, monkeypatch):
    """The spec attack keeps its own budget (50 steps, 10 restarts) unless --pgd-steps/--pgd-restarts
    are named, on the command line or in --config; the other options reach the verifier as given."""
    from robustcli import spec_check

    net, prop, _ = spec_files
    seen: list[dict] = []

    def fake_verify(model, prop, shape, **kw):
        seen.append(kw)
        return SpecResult(status="holds", method="ibp", seconds=0.0)

    monkeypatch.setattr(spec_check, "verify_property", fake_verify)
    r = run_cli("certify", "--model", net, "--spec", prop, "--method", "ibp")
    assert r.exit_code == 0, r.output
    assert (seen[-1]["attack_steps"], seen[-1]["attack_restarts"]) == (50, 10)
    assert seen[-1]["methods"] == ("attack", "ibp") and seen[-1]["timeout"] is None
    js = prop.parent / "r.json"
    r = run_cli("certify", "--model", net, "--spec", prop, "--pgd-restarts", "2", "--timeout", "7", "--bab-split",
                "relu", "--alpha-iterations", "3", "--seed", "4", "--json", js)
    assert r.exit_code == 0, r.output
    assert {k: seen[-1][k] for k in ("attack_steps", "attack_restarts", "timeout", "bab_split", "alpha_iterations",
                                     "seed")} == {"attack_steps": 50, "attack_restarts": 2, "timeout": 7.0,
                                                  "bab_split": "relu", "alpha_iterations": 3, "seed": 4}
    report = json.loads(js.read_text())
    assert report["methods"] == list(METHODS) and report["seed"] == 4
    r = run_cli("certify", "--config", CONFIGS / "certify-spec-crown.yaml", "--model", net, "--spec", prop)
    assert r.exit_code == 0, r.output
    assert seen[-1]["attack_steps"] == 50 and seen[-1]["timeout"] == 30.0  # the config's pgd-steps and timeout
    assert seen[-1]["methods"] == ("attack", "ibp", "crown")


def test_vnncomp_passes_the_request_to_the_benchmark(run_cli, spec_files, monkeypatch):
    from robustcli.commands import vnncomp

    _, _, csv = spec_files
    seen: list[dict] = []
    monkeypatch.setattr(vnncomp, "run_benchmark", lambda todo, **kw: seen.append({"n": len(todo), **kw}) or [])
    r = run_cli("vnncomp", csv, "--attack-steps", "3", "--method", "attack", "ibp", "--limit", "1", "--jobs", "2")
    assert r.exit_code == 0, r.output
    got = seen[-1]
    assert got["n"] == 1 and got["jobs"] == 2 and got["methods"] == ("attack", "ibp")
    assert (got["attack_steps"], got["attack_restarts"], got["alpha_iterations"], got["bab_split"]) == (3, 10, 20, "auto")
    r = run_cli("vnncomp", csv, "--config", CONFIGS / "vnncomp-quick.yaml")
    assert r.exit_code == 0, r.output
    assert seen[-1]["timeout"] == 10.0 and seen[-1]["methods"] == ("attack", "ibp", "crown", "alpha-crown")
