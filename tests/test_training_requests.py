"""The trainers' requests: defaults owned once (the commands' `--help` shows them), warm-up defaults
that scale with --epochs, and every bad value refused with the long flag it came from."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from robustcli.certify.training import recipe_config
from robustcli.cli import cli
from robustcli.defenses.adversarial import AdversarialConfig
from robustcli.defenses.advmoe import MoEConfig
from robustcli.requests import OptionError
from robustcli.training_requests import (
    AdversarialTrainRequest,
    DistillRequest,
    IBPTrainRequest,
    MoETrainRequest,
    TrainRequest,
)

COMMANDS = {"train": AdversarialTrainRequest, "distill": DistillRequest, "train-moe": MoETrainRequest,
            "train-ibp": IBPTrainRequest}  # fmt: skip
# Click parameter names that differ from the request's field (the field is named like the long flag)
PARAM_TO_FIELD = {"train_n": "n_train", "eval_n": "num_points", "n": "num_points", "html_path": "html"}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_defaults_are_the_requests(name):
    """Every option the request has takes its default from it, so the two cannot drift apart."""
    given = {"data": "digits", "out": "m.safetensors"} | ({"eps": 0.1} if name == "train-ibp" else {})
    args = [a for k, v in given.items() for a in (f"--{k}", str(v))]
    params = cli.commands[name].make_context(name, args).params
    fields = {f.name: f for f in dataclasses.fields(COMMANDS[name])}
    checked = 0
    for param, value in params.items():
        field = fields.get(PARAM_TO_FIELD.get(param, param))
        if field is None or param in given:
            continue
        value = tuple(value) if isinstance(value, list) else value
        assert value == field.default, (name, param, value, field.default)
        checked += 1
    assert checked >= 8


def _out(tmp_path) -> str:
    return str(tmp_path / "m.safetensors")


@pytest.mark.parametrize("epochs,expected", [(1, 0), (2, 1), (3, 2), (10, 2)])
def test_warmup_default_scales_with_epochs(tmp_path, epochs, expected):
    assert AdversarialTrainRequest(data="digits", out=_out(tmp_path), epochs=epochs).warmup_epochs == expected
    assert MoETrainRequest(data="digits", out=_out(tmp_path), epochs=epochs).warmup_epochs == expected


def test_explicit_warmup_is_checked_only_where_eps_ramps(tmp_path):
    with pytest.raises(OptionError, match="--warmup 2 leaves no epoch at the full eps") as e:
        AdversarialTrainRequest(data="digits", out=_out(tmp_path), epochs=2, warmup=2)
    assert e.value.option == "warmup"
    with pytest.raises(OptionError, match="--warmup must be >= 0, got -1"):
        MoETrainRequest(data="digits", out=_out(tmp_path), warmup=-1)
    # natural / Gaussian training and a natural-only MoE run have no eps ramp
    assert AdversarialTrainRequest(data="digits", out=_out(tmp_path), defense="natural", epochs=1, warmup=3).warmup_epochs == 0
    moe = MoETrainRequest(data="digits", out=_out(tmp_path), mode=("natural",), dense=False, epochs=1, warmup=3)
    assert moe.warmup_epochs == 0 and moe.config("natural").warmup_epochs == 0


BAD = [
    (AdversarialTrainRequest, {"epochs": 0}, "epochs"),
    (AdversarialTrainRequest, {"lr": 0.0}, "lr"),
    (AdversarialTrainRequest, {"batch_size": -1}, "batch-size"),
    (AdversarialTrainRequest, {"n_train": 0}, "n-train"),
    (AdversarialTrainRequest, {"eps": 1.5}, "eps"),
    (AdversarialTrainRequest, {"beta": -1.0}, "beta"),
    (AdversarialTrainRequest, {"defense": "gaussian", "sigma": 0.0}, "sigma"),
    (AdversarialTrainRequest, {"eval_steps": 0}, "eval-steps"),
    (AdversarialTrainRequest, {"defense": "mixup"}, "defense"),
    (DistillRequest, {"temperature": 0.0}, "temperature"),
    (DistillRequest, {"eval_eps": -0.1}, "eval-eps"),
    (DistillRequest, {"num_points": 0}, "num-points"),
    (MoETrainRequest, {"experts": 3}, "experts"),
    (MoETrainRequest, {"top_k": 5}, "top-k"),
    (MoETrainRequest, {"alpha": -1.0}, "alpha"),
    (MoETrainRequest, {"mode": ("dense",)}, "mode"),
    (MoETrainRequest, {"data": "my.npz"}, "data"),
    (IBPTrainRequest, {"eps": float("inf")}, "eps"),
    (IBPTrainRequest, {"eps": 0.1, "n_train": 1}, "n-train"),
    (IBPTrainRequest, {"eps": 0.1, "lr_decay": 1.5}, "lr-decay"),
    (IBPTrainRequest, {"eps": 0.1, "kappa": 2.0}, "kappa"),
    (IBPTrainRequest, {"eps": 0.1, "tau": 0.0}, "tau"),
    (IBPTrainRequest, {"eps": 0.1, "start": -1}, "start"),
    (IBPTrainRequest, {"eps": 0.1, "pgd_steps": 0}, "pgd-steps"),
    (IBPTrainRequest, {"eps": 0.1, "data": "my.npz"}, "data"),
    (IBPTrainRequest, {"eps": 0.1, "arch": "mnist-cnn-bn"}, "arch"),
    (IBPTrainRequest, {"eps": 0.1, "recipe": "long"}, "recipe"),
]


@pytest.mark.parametrize("cls,values,option", BAD, ids=[f"{c.__name__}-{o}" for c, _, o in BAD])
def test_bad_values_name_their_flag(tmp_path, cls, values, option):
    values = {"data": "digits", "out": _out(tmp_path)} | values
    with pytest.raises(OptionError) as e:
        cls(**values)
    assert e.value.option == option
    assert str(e.value).startswith(f"--{option} ")


def test_output_paths_are_checked_after_the_values(tmp_path):
    with pytest.raises(OptionError, match="--out .*safetensors"):
        DistillRequest(data="digits", out=str(tmp_path / "m.pt"))
    with pytest.raises(OptionError, match="--html .*html"):
        DistillRequest(data="digits", out=_out(tmp_path), html=str(tmp_path / "r.txt"))
    with pytest.raises(OptionError, match="--epochs"):  # the value first, then the paths
        DistillRequest(data="digits", out=str(tmp_path / "m.pt"), epochs=0)


def test_requests_build_the_engine_configs(tmp_path):
    at = AdversarialTrainRequest(data="digits", out=_out(tmp_path), epochs=3, eps=0.2, attack_steps=4, seed=5)
    assert at.config() == AdversarialConfig(defense="pgd-at", eps=0.2, epochs=3, attack_steps=4, warmup_epochs=2, seed=5)
    moe = MoETrainRequest(data="digits", out=_out(tmp_path), epochs=2, eps=0.2, alpha=3.0)
    assert moe.modes == ("advmoe", "at") and moe.family == "digits"
    assert moe.config("advmoe") == MoEConfig(mode="advmoe", eps=0.2, epochs=2, attack_steps=2, alpha=3.0, warmup_epochs=1)
    assert moe.config("dense-at") == AdversarialConfig(defense="pgd-at", eps=0.2, epochs=2, attack_steps=2, warmup_epochs=1)
    ibp = IBPTrainRequest(data="digits", out=_out(tmp_path), eps=0.1, epochs=7, lr_milestones=[5])
    assert ibp.architecture == "digits-mlp-bn" and ibp.lr_milestones == (5,)
    assert ibp.config() == recipe_config("short", 0.1, 7, lr_milestones=(5,), lr=5e-4, batch_size=128)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ibp.eps = 0.2  # type: ignore[misc]
    assert issubclass(IBPTrainRequest, TrainRequest)


def test_command_reports_a_request_error_in_one_line(run_cli, tmp_path):
    r = run_cli("train-moe", "--data", "digits", "--top-k", "5", "--out", _out(tmp_path))
    assert r.exit_code == 2 and "--top-k must lie in 1..--experts (4), got 5" in r.stderr
    assert not list(tmp_path.iterdir())
    assert CliRunner().invoke(cli, ["train", "--help"]).exit_code == 0


def test_a_missing_required_option_is_one_line_not_a_traceback(run_cli, tmp_path):
    """`--eps` of train-ibp and `--data` of the trainers are required: leaving them out is Click's one
    line and exit 2 (an explicit default of None used to skip the check and crash in the request)."""
    out = str(tmp_path / "m.safetensors")
    for args, flag in ((("train-ibp", "--data", "digits", "--out", out), "--eps"), (("train", "--out", out), "--data")):
        r = run_cli(*args)
        assert r.exit_code == 2, r.output
        assert f"Missing option '{flag}'" in r.output and "Traceback" not in r.output
        assert not (tmp_path / "m.safetensors").exists()
