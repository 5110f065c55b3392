"""`robust vnncomp`: run a VNN-COMP benchmark from its instances CSV (see certify/vnncomp.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import errno
import os
from typing import Callable, TypeVar

import click

from robustcli.certify.spec_verify import BAB_BOUNDS, BAB_SPLITS, METHODS
from robustcli.certify.vnncomp import RESULT_WORDS, read_instances, result_line, run_benchmark
from robustcli.core.device import resolve_device
from robustcli.core.errors import InputError
from robustcli.options import MultiOption, RobustCommand, config_option, device_option, json_option, seed_option
from robustcli.progress import progress_bar
from robustcli.report import print_table, write_json
from robustcli.verify_requests import VnncompRequest

RESULTS = ("holds", "violated", "unknown", "timeout", "error")
T = TypeVar("T")


def writable(path, act: Callable[[], T]) -> T:
    """`act()`, with a file-system failure (read-only folder, full disk) as one line naming `path`."""
    try:
        return act()
    except OSError as e:
        why = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only"}.get(e.errno, e.strerror)
        raise InputError(f"cannot write {path}: {why or type(e).__name__}") from None


def refuse_overwriting_inputs(instances: str, todo: list, outputs: dict[str, str | None]) -> None:
    """An output path naming the instances CSV, a network or a property would empty that input."""
    inputs = {Path(instances).resolve()} | {p.resolve() for inst in todo for p in (inst.network, inst.property)}
    for flag, out in outputs.items():
        if out and Path(out).resolve() in inputs:
            raise InputError(f"{flag} {out} is one of the benchmark's input files; write the results to another file")


@click.command("vnncomp", cls=RobustCommand)
@config_option
@click.argument("instances", type=click.Path(dir_okay=False))
@click.option("--timeout", type=float, default=VnncompRequest.timeout,
              help="Seconds per instance (default: the CSV's column).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="VNN-COMP results CSV to write.")
@click.option("--result-words", type=click.Choice(sorted(RESULT_WORDS)), default="2021", show_default=True,
              help="Answer words of the results CSV: 2021's holds / violated or 2022+'s unsat / sat.")
@click.option("--counterexamples", type=click.Path(file_okay=False),
              help="Folder for counterexample files (default: beside --out, else none written).")
@click.option("--method", cls=MultiOption, type=click.Choice(METHODS),
              help=f"Stages in order (default all: {' '.join(VnncompRequest().methods)}).")
@click.option("--limit", type=int, default=VnncompRequest.limit, help="Run only the first N instances.")
@click.option("--jobs", type=int, default=VnncompRequest.jobs, show_default=True,
              help="Instances run in parallel worker processes (CPU threads are split between them; at most one per "
              "instance and per CPU core).")
@click.option("--attack-steps", type=int, default=VnncompRequest.attack_steps, show_default=True)
@click.option("--attack-restarts", type=int, default=VnncompRequest.attack_restarts, show_default=True)
@click.option("--alpha-iterations", type=int, default=VnncompRequest.alpha_iterations, show_default=True)
@click.option("--bab-split", type=click.Choice(BAB_SPLITS), default=VnncompRequest.bab_split, show_default=True,
              help="Branch and bound splits the input box (input), ReLUs (relu), or input for <= 16 inputs (auto).")
@click.option("--bab-bounds", type=click.Choice(BAB_BOUNDS), default=VnncompRequest.bab_bounds, show_default=True,
              help="Sub-problem bounds of ReLU branch and bound: the parent's (reuse), CROWN per sub-problem "
              "(refresh), or reuse for 30% of the time, then refresh (auto).")
@device_option
@seed_option
@json_option
def command(
    instances, timeout, out_path, result_words, counterexamples, method, limit, jobs, attack_steps, attack_restarts,
    alpha_iterations, bab_split, bab_bounds, device, seed, json_path,
) -> None:  # fmt: skip
    """Run a VNN-COMP benchmark: ONNX networks x VNNLIB properties from an instances CSV.

    \b
    robust vnncomp benchmarks/mnistfc/instances.csv --timeout 60 --out results.csv --jobs 2

    Each result line is appended to --out (and flushed) as soon as its instance is decided, so an
    interrupted run keeps every finished line; an instance that fails is recorded as `error`.
    """
    request = VnncompRequest(
        method=tuple(method), timeout=timeout, alpha_iterations=alpha_iterations, bab_split=bab_split,
            bab_bounds=bab_bounds, seed=seed,
        attack_steps=attack_steps, attack_restarts=attack_restarts, limit=limit, jobs=jobs,
    )  # fmt: skip
    todo = read_instances(instances)[: request.limit]
    dev = resolve_device(device)
    ce_dir = Path(counterexamples) if counterexamples else (
        Path(out_path).parent / (Path(out_path).stem + "_counterexamples") if out_path else None)
    for p in (Path(out_path).parent if out_path else None, json_path and Path(json_path).parent):
        if p and not p.exists():
            raise InputError(f"folder {p} does not exist")
    refuse_overwriting_inputs(instances, todo, {"--out": out_path, "--json": json_path})
    benchmark = Path(instances).resolve().parent.name
    counts: Counter = Counter()
    # Opened (and emptied) before any work: each finished instance's line is appended and flushed.
    out_file = writable(out_path, lambda: open(out_path, "w")) if out_path else None  # noqa: SIM115 - closed below
    try:
        if ce_dir is not None:
            writable(ce_dir, lambda: ce_dir.mkdir(parents=True, exist_ok=True))
        with progress_bar("instances", len(todo)) as advance:
            def on_instance(r) -> None:
                counts[r.result] += 1
                if out_file is not None:
                    def append() -> None:
                        out_file.write(result_line(r, benchmark, result_words) + "\n")
                        out_file.flush()
                        os.fsync(out_file.fileno())

                    writable(out_path, append)
                if r.result == "error":
                    click.echo(f"error: {r.instance.network.name} {r.instance.property.name}: "
                               f"{r.stages[0]['note'] if r.stages else 'failed'}", err=True)
                advance(1, **{k: counts[k] for k in RESULTS if counts[k]})

            results = run_benchmark(
                todo, device=dev, counterexample_dir=ce_dir, on_instance=on_instance, jobs=request.jobs,
                **request.verifier_options(),
            )
    finally:
        if out_file is not None:
            out_file.close()
    rows = [[r.instance.network.name, r.instance.property.name, r.result, r.method or "-", f"{r.seconds:.2f}s"]
            for r in results]
    summary = ", ".join(f"{k} {counts[k]}" for k in RESULTS if counts[k])
    print_table(f"VNN-COMP {benchmark}: {len(results)} instances", ["network", "property", "result", "by", "time"],
                rows, caption=summary)
    if json_path:
        write_json(json_path, {
            "command": "vnncomp", "instances": str(instances), "timeout": request.timeout,
            "methods": list(request.methods), "jobs": request.jobs, "seed": request.seed, "device": str(dev),
            "counts": {k: counts[k] for k in RESULTS},
            "results": [r.summary() for r in results],
        })
