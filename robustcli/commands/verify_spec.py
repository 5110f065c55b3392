"""`robust verify-spec`: check a VNNLIB property on a model (holds / violated / unknown).

The input box and the output property come from the .vnnlib file; see certify/spec_verify.py.
`run_spec_check` is shared with other commands that accept `--spec`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from certify.spec_verify import METHODS, SpecResult, verify_property
from certify.vnnlib import read_vnnlib
from certify.vnncomp import write_counterexample
from robustcli.archs import ARCHS
from robustcli.device import resolve_device
from robustcli.errors import CheckFailed, InputError
from robustcli.models import LoadedModel, load_model
from robustcli.options import MultiOption, RobustCommand, config_option, json_option, model_options
from robustcli.progress import progress_bar
from robustcli.report import atomic_path, print_table, write_json

BOUND_METHODS = tuple(m for m in METHODS if m != "attack")


def model_input_shape(loaded: LoadedModel, n_inputs: int, given: tuple[int, ...]) -> tuple[int, ...]:
    """The per-point input shape: --input-shape, the ONNX graph's, the built-in arch's, or flat."""
    if given:
        shape = tuple(given)
    elif "input_shape" in loaded.meta:
        shape = tuple(json.loads(loaded.meta["input_shape"]))
    elif loaded.arch in ARCHS:
        shape = ARCHS[loaded.arch].input_shape
    else:
        shape = (n_inputs,)
    if math.prod(shape) != n_inputs:
        raise InputError(f"the property has {n_inputs} inputs X_i but the model's input shape {shape} has "
                         f"{math.prod(shape)} values; pass --input-shape matching the property")
    return shape


def run_spec_check(
    loaded: LoadedModel,
    spec: str,
    *,
    methods: tuple[str, ...],
    timeout: float | None,
    seed: int,
    input_shape: tuple[int, ...] = (),
    counterexample: str | None = None,
    attack_steps: int = 50,
    attack_restarts: int = 10,
    alpha_iterations: int = 20,
) -> tuple[SpecResult, dict]:
    """Verify `spec` on the loaded model; write the counterexample file when violated; return (result, report)."""
    prop = read_vnnlib(spec)
    shape = model_input_shape(loaded, prop.n_inputs, input_shape)
    reference, ref_name = None, "torch"
    if loaded.meta.get("format") == "onnx":
        try:
            from certify.onnx_check import onnxruntime_function

            reference, ref_name = onnxruntime_function(loaded.name, shape), "onnxruntime"
        except InputError:
            pass  # onnxruntime not installed: the converted model re-checks instead (reported)
    ce_path = Path(counterexample or f"{Path(loaded.name).stem}__{Path(spec).stem}.counterexample")
    if ce_path.parent and not ce_path.parent.exists():
        raise InputError(f"cannot write {ce_path}: folder {ce_path.parent} does not exist")
    with progress_bar("verifying", len(methods)) as advance:
        started: list[str] = []

        def on_stage(name: str) -> None:
            if started:
                advance(1)
            started.append(name)
            advance(0, stage=name)

        result = verify_property(
            loaded.module, prop, shape, methods=methods, timeout=timeout, seed=seed, reference=reference,
            reference_name=ref_name, attack_steps=attack_steps, attack_restarts=attack_restarts,
            alpha_iterations=alpha_iterations, on_stage=on_stage,
        )
        advance(len(methods) - len(started) + 1)
    report = {
        "model": loaded.name,
        "spec": spec,
        "status": result.status,
        "method": result.method,
        "seconds": result.seconds,
        "stages": result.stages,
    }
    if result.status == "violated":
        with atomic_path(ce_path) as tmp:
            write_counterexample(tmp, result.counterexample, result.outputs)
        report |= {"counterexample": str(ce_path), "confirmed_by": result.confirmed_by}
    return result, report


def spec_tables(report: dict) -> None:
    rows = []
    for s in report["stages"]:
        done = f"{s['refuted']}/{s['total']}" if "refuted" in s else "-"
        rows.append([s["method"], f"{s['seconds']:.2f}s", done, s.get("note", "")])
    print_table(f"{Path(report['spec']).name} on {Path(report['model']).name}",
                ["stage", "time", "cases refuted", "note"], rows)
    extra = f"  counterexample: {report['counterexample']} (confirmed by {report['confirmed_by']})" \
        if report["status"] == "violated" else ""
    click.echo(f"result: {report['status']}" + (f" (by {report['method']})" if report["method"] else "")
               + f" in {report['seconds']:.2f}s" + extra)


def spec_methods(method: tuple[str, ...], no_attack: bool) -> tuple[str, ...]:
    chosen = [m for m in BOUND_METHODS if m in set(method)] if method else list(BOUND_METHODS)
    return tuple(([] if no_attack else ["attack"]) + chosen)


@click.command("verify-spec", cls=RobustCommand)
@config_option
@model_options
@click.option("--spec", required=True, type=click.Path(dir_okay=False), help="VNNLIB property file.")
@click.option("--method", cls=MultiOption, type=click.Choice(BOUND_METHODS),
              help="Bound engines to try, cheapest first (default ibp crown alpha-crown).")
@click.option("--no-attack", is_flag=True, help="Skip the counterexample search (PGD on the property's margins).")
@click.option("--timeout", type=float, default=None, help="Seconds before giving up (answer: timeout).")
@click.option("--input-shape", cls=MultiOption, type=int, help="Per-point input shape if the model does not say.")
@click.option("--counterexample", type=click.Path(dir_okay=False), help="Where to write a counterexample.")
@click.option("--attack-steps", type=int, default=50, show_default=True)
@click.option("--attack-restarts", type=int, default=10, show_default=True)
@click.option("--alpha-iterations", type=int, default=20, show_default=True)
@click.option("--strict", is_flag=True, help="Exit 1 unless the property is proved to hold.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--seed", type=int, default=0, show_default=True)
@json_option
def command(
    model, arch, mean, std, allow_pickle, spec, method, no_attack, timeout, input_shape, counterexample,
    attack_steps, attack_restarts, alpha_iterations, strict, device, seed, json_path,
) -> None:  # fmt: skip
    """Prove or refute a VNNLIB property: holds, violated (with a checked counterexample) or unknown.

    \b
    robust verify-spec --model net.onnx --spec prop.vnnlib
    robust verify-spec --model net.onnx --spec prop.vnnlib --method crown --timeout 10
    """
    for flag, v in (("--attack-steps", attack_steps), ("--attack-restarts", attack_restarts),
                    ("--alpha-iterations", alpha_iterations)):
        if v < 1:
            raise InputError(f"{flag} must be >= 1, got {v}")
    if timeout is not None and not timeout > 0:
        raise InputError(f"--timeout must be > 0, got {timeout}")
    dev = resolve_device(device)
    loaded = load_model(model, arch=arch, mean=list(mean) or None, std=list(std) or None,
                        allow_pickle=allow_pickle, device=dev)
    _, report = run_spec_check(
        loaded, spec, methods=spec_methods(method, no_attack), timeout=timeout, seed=seed,
        input_shape=tuple(input_shape), counterexample=counterexample, attack_steps=attack_steps,
        attack_restarts=attack_restarts, alpha_iterations=alpha_iterations,
    )
    spec_tables(report)
    if json_path:
        write_json(json_path, report | {"seed": seed, "device": str(dev)})
    if strict and report["status"] != "holds":
        raise CheckFailed(f"the property is {report['status']}, not proved to hold")
