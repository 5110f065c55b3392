"""`robust certify --spec prop.vnnlib`: check a VNNLIB property on a model (holds / violated / unknown).

The input box and the output property come from the .vnnlib file; see certify/spec_verify.py.
CLI-layer glue only: the counterexample file, the table and the JSON report; the options are a
`SpecRequest` (robustcli/verify_requests.py) that the command builds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from robustcli.certify.spec_verify import SpecResult, verify_property
from robustcli.certify.vnnlib import check_fits, read_vnnlib
from robustcli.certify.vnncomp import counterexample_name, result_file_text, write_counterexample
from robustcli.archs import ARCHS
from robustcli.core.errors import InputError
from robustcli.core.device import resolve_device
from robustcli.models import LoadedModel, load_model
from robustcli.progress import progress_bar
from robustcli.report import atomic_path, print_table, write_json
from robustcli.verify_requests import VerifyRequest


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
                         f"{math.prod(shape)} values; the property does not fit this model")
    return shape


def model_output_size(module, shape: tuple[int, ...]) -> int:
    """Outputs per point, from one forward pass at zero on the model's device."""
    import torch

    from robustcli.core.nn import eval_mode

    p = next(module.parameters(), None)
    with torch.no_grad(), eval_mode(module):
        y = module(torch.zeros(1, *shape, device=p.device if p is not None else "cpu",
                                      dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32))
    return y[0].numel()


def run_spec_check(
    loaded: LoadedModel,
    spec: str,
    request: VerifyRequest,
    *,
    input_shape: tuple[int, ...] = (),
    counterexample: str | None = None,
    result_file: str | None = None,
) -> tuple[SpecResult, dict]:
    """Verify `spec` on the loaded model; write the counterexample file when violated, and the
    VNN-COMP 2022+ `result_file` when given; return (result, report)."""
    prop = read_vnnlib(spec)
    shape = model_input_shape(loaded, prop.n_inputs, input_shape)
    check_fits(prop, prop.n_inputs, model_output_size(loaded.module, shape), Path(loaded.name).name)
    reference, ref_name = None, "torch"
    if loaded.meta.get("format") == "onnx":
        try:
            from robustcli.certify.onnx_check import onnxruntime_function

            reference, ref_name = onnxruntime_function(loaded.name, shape), "onnxruntime"
        except InputError:
            pass  # onnxruntime not installed: the converted model re-checks instead (reported)
    ce_path = Path(counterexample or counterexample_name(Path(loaded.name), Path(spec)))
    for out in (ce_path, Path(result_file) if result_file else None):
        if out is not None and out.parent and not out.parent.exists():
            raise InputError(f"cannot write {out}: folder {out.parent} does not exist")
    _refuse_overwriting_inputs({"--counterexample": ce_path, "--result-file": result_file},
                               {"the property": Path(spec), "the model": Path(loaded.name)})
    methods = request.methods
    with progress_bar("verifying", len(methods)) as advance:
        started: list[str] = []

        def on_stage(name: str) -> None:
            if started:
                advance(1)
            started.append(name)
            advance(0, stage=name)

        result = verify_property(
            loaded.module, prop, shape, reference=reference, reference_name=ref_name, on_stage=on_stage,
            **request.verifier_options(),
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
    if result_file:
        witness = (result.counterexample, result.outputs) if result.status == "violated" else None
        with atomic_path(result_file) as tmp:
            tmp.write_text(result_file_text(result.status, witness))
        report["result_file"] = str(result_file)
    return result, report


def _refuse_overwriting_inputs(outputs: dict[str, str | Path | None], inputs: dict[str, Path]) -> None:
    """An output naming the property, the model or the other output would overwrite it with a result."""
    seen = {p.resolve(): what for what, p in inputs.items() if p.exists()}
    for flag, out in outputs.items():
        if out is None:
            continue
        where = Path(out).resolve()
        if where in seen:
            raise InputError(f"{flag} {out} is {seen[where]} file too; write it to another file")
        seen[where] = f"the {flag}"


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


def check_spec_combination(*, data: str | None, n: int | None, eps: tuple[float, ...]) -> None:
    """The property file gives the input box, so the dataset options do not combine with --spec."""
    if data is not None or n is not None or eps:
        raise InputError("--spec replaces --data, --n and --eps: the input box comes from the property file")


def certify_spec(
    model: str, request: VerifyRequest, *, arch, mean, std, allow_pickle, spec, counterexample, result_file, device,
    json_path,
) -> None:  # fmt: skip
    """`robust certify --spec`: the property file gives the input box and the output condition."""
    dev = resolve_device(device)
    # a float64 ONNX file stays float64: the verifier bounds the file's own weights (attacks run a float32 copy)
    loaded = load_model(model, arch=arch, mean=list(mean) or None, std=list(std) or None,
                        allow_pickle=allow_pickle, device=dev, onnx_precision="file")
    _, report = run_spec_check(loaded, spec, request, counterexample=counterexample, result_file=result_file)
    spec_tables(report)
    if json_path:
        write_json(json_path, {"command": "certify", **report, "methods": list(request.methods),
                               "seed": request.seed, "device": str(dev)})
