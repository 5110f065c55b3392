"""`robust vnncomp`: run a VNN-COMP benchmark from its instances CSV (see certify/vnncomp.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from robustcli.certify.spec_verify import METHODS
from robustcli.certify.vnncomp import read_instances, result_lines, run_benchmark
from robustcli.core.device import resolve_device
from robustcli.core.errors import InputError
from robustcli.options import MultiOption, RobustCommand, config_option, device_option, json_option, seed_option
from robustcli.progress import progress_bar
from robustcli.report import atomic_path, print_table, write_json

RESULTS = ("holds", "violated", "unknown", "timeout", "error")


@click.command("vnncomp", cls=RobustCommand)
@config_option
@click.argument("instances", type=click.Path(dir_okay=False))
@click.option("--timeout", type=float, default=None, help="Seconds per instance (default: the CSV's column).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="VNN-COMP results CSV to write.")
@click.option("--counterexamples", type=click.Path(file_okay=False),
              help="Folder for counterexample files (default: beside --out, else none written).")
@click.option("--method", cls=MultiOption, type=click.Choice(METHODS),
              help="Stages in order (default attack ibp crown alpha-crown).")
@click.option("--limit", type=int, default=None, help="Run only the first N instances.")
@click.option("--attack-steps", type=int, default=50, show_default=True)
@click.option("--attack-restarts", type=int, default=10, show_default=True)
@click.option("--alpha-iterations", type=int, default=20, show_default=True)
@device_option
@seed_option
@json_option
def command(
    instances, timeout, out_path, counterexamples, method, limit, attack_steps, attack_restarts,
    alpha_iterations, device, seed, json_path,
) -> None:  # fmt: skip
    """Run a VNN-COMP benchmark: ONNX networks x VNNLIB properties from an instances CSV.

    \b
    robust vnncomp benchmarks/mnistfc/instances.csv --timeout 60 --out results.csv
    """
    if timeout is not None and not timeout > 0:
        raise InputError(f"--timeout must be > 0, got {timeout}")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")
    for flag, v in (("--attack-steps", attack_steps), ("--attack-restarts", attack_restarts),
                    ("--alpha-iterations", alpha_iterations)):
        if v < 1:
            raise InputError(f"{flag} must be >= 1, got {v}")
    todo = read_instances(instances)[:limit]
    dev = resolve_device(device)
    ce_dir = Path(counterexamples) if counterexamples else (
        Path(out_path).parent / (Path(out_path).stem + "_counterexamples") if out_path else None)
    for p in (Path(out_path).parent if out_path else None, json_path and Path(json_path).parent):
        if p and not p.exists():
            raise InputError(f"folder {p} does not exist")
    if ce_dir is not None:
        ce_dir.mkdir(parents=True, exist_ok=True)
    methods = tuple(dict.fromkeys(method)) if method else METHODS
    counts: Counter = Counter()
    with progress_bar("instances", len(todo)) as advance:
        def on_instance(r) -> None:
            counts[r.result] += 1
            advance(1, **{k: counts[k] for k in ("holds", "violated", "unknown", "timeout") if counts[k]})

        results = run_benchmark(
            todo, timeout=timeout, methods=methods, seed=seed, device=dev, counterexample_dir=ce_dir,
            attack_steps=attack_steps, attack_restarts=attack_restarts, alpha_iterations=alpha_iterations,
            on_instance=on_instance,
        )
    benchmark = Path(instances).resolve().parent.name
    rows = [[r.instance.network.name, r.instance.property.name, r.result, r.method or "-", f"{r.seconds:.2f}s"]
            for r in results]
    summary = ", ".join(f"{k} {counts[k]}" for k in RESULTS if counts[k])
    print_table(f"VNN-COMP {benchmark}: {len(results)} instances", ["network", "property", "result", "by", "time"],
                rows, caption=summary)
    if out_path:
        with atomic_path(out_path) as tmp:
            tmp.write_text("\n".join(result_lines(results, benchmark)) + "\n")
    if json_path:
        write_json(json_path, {
            "command": "vnncomp", "instances": str(instances), "timeout": timeout, "methods": list(methods),
            "seed": seed, "device": str(dev), "counts": {k: counts[k] for k in RESULTS},
            "results": [r.summary() for r in results],
        })
