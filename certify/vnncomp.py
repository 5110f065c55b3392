"""Running a VNN-COMP benchmark folder: instances CSV in, one result per instance out.

The instances CSV has rows `network.onnx,property.vnnlib,timeout_seconds` (paths relative to the
CSV's folder). Results use VNN-COMP 2021's results_csv columns:
`benchmark,onnx,vnnlib,prepare_seconds,result,seconds` with result holds | violated | unknown |
timeout | error. A violated answer's counterexample is written in the competition's format,
`((X_0 v) (X_1 v) ... (Y_0 v) ...)`, with the outputs onnxruntime computed for it. VNN-COMP 2022
on names the answers by the negated property the VNNLIB file states: `unsat` (no input violates:
holds) and `sat` (violated); `RESULT_WORDS` maps them, and `result_file_text` writes a 2022+
`run_instance.sh` results file: the word on the first line, then a `sat` answer's witness.

A run keeps what it has: `run_benchmark` reports each result through `on_instance` the moment it
is decided (the CLI appends and flushes its CSV line then), an instance that fails for any reason
becomes `error` with the reason and the run goes on, and `jobs > 1` runs instances in that many
worker processes (spawned, each with its own model cache and CPU threads split between them),
reporting results in the order they finish.
"""

from __future__ import annotations

import csv
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from robustcli.certify.onnx_check import onnxruntime_function
from robustcli.certify.onnx_import import onnx_to_torch
from robustcli.certify.spec_verify import METHODS, SpecResult, verify_property
from robustcli.certify.vnnlib import check_fits, read_vnnlib
from robustcli.core.errors import InputError
from robustcli.core.files import atomic_path


@dataclass
class Instance:
    network: Path
    property: Path
    timeout: float
    # The paths as the CSV writes them (relative to its folder; VNN-COMP 2022+ uses `onnx/x.onnx`,
    # `vnnlib/p.vnnlib`): result lines repeat them, so scoring scripts can match rows to instances.
    network_text: str | None = None
    property_text: str | None = None

    def csv_paths(self) -> tuple[str, str]:
        """`./<path as in the CSV>` for network and property (`./<file name>` when built by hand)."""
        def dotted(text: str | None, p: Path) -> str:
            rel = (text or p.name).strip().replace("\\", "/")
            return rel if rel.startswith(("./", "/")) else f"./{rel}"

        return dotted(self.network_text, self.network), dotted(self.property_text, self.property)


@dataclass
class InstanceResult:
    instance: Instance
    result: str
    seconds: float
    prepare_seconds: float
    method: str | None = None
    counterexample: Path | None = None
    confirmed_by: str | None = None
    stages: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "network": self.instance.network.name,
            "property": self.instance.property.name,
            "result": self.result,
            "seconds": self.seconds,
            "prepare_seconds": self.prepare_seconds,
            "method": self.method,
            "counterexample": str(self.counterexample) if self.counterexample else None,
            "confirmed_by": self.confirmed_by,
            "stages": self.stages,
        }


def read_instances(path: str | Path) -> list[Instance]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"instances file {path} does not exist")
    try:
        # utf-8-sig: a byte-order mark (spreadsheet exports write one) is not part of the first path
        with path.open(newline="", encoding="utf-8-sig") as f:
            out = [inst for inst in (_instance(path, lineno, row) for lineno, row in enumerate(csv.reader(f), 1)) if inst]
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text file; an instances CSV has network,property,timeout lines") from None
    except csv.Error as e:  # a NUL byte, a field over the csv module's size limit
        raise InputError(f"{path} is not a readable CSV ({e}); an instances CSV has network,property,timeout lines") from None
    if not out:
        raise InputError(f"{path.name} lists no instances")
    return out


def _instance(path: Path, lineno: int, row: list[str]) -> Instance | None:
    """One line of an instances CSV (None for a blank one); paths are relative to the CSV's folder."""
    if not row or not "".join(row).strip():
        return None
    if len(row) != 3:
        raise InputError(f"{path.name}:{lineno}: expected network,property,timeout; got {len(row)} columns")
    net, prop = (path.parent / row[0].strip(), path.parent / row[1].strip())
    try:
        timeout = float(row[2])
    except ValueError:
        raise InputError(f"{path.name}:{lineno}: timeout {row[2]!r} is not a number") from None
    if not (math.isfinite(timeout) and timeout > 0):
        raise InputError(f"{path.name}:{lineno}: timeout {row[2].strip()!r} must be a positive number of seconds")
    for p in (net, prop):
        if not p.is_file():
            raise InputError(f"{path.name}:{lineno}: {p} {'is not a regular file' if p.exists() else 'does not exist'}")
    return Instance(net, prop, timeout, row[0].strip(), row[1].strip())


def counterexample_name(network: Path, prop: Path) -> str:
    """`<network>__<property>.counterexample`, each without its `.onnx` / `.vnnlib` (and `.gz`) suffix."""
    def bare(p: Path) -> str:
        name = p.name[:-3] if p.name.endswith(".gz") else p.name
        return Path(name).stem

    return f"{bare(network)}__{bare(prop)}.counterexample"


def counterexample_text(x: torch.Tensor, y: torch.Tensor) -> str:
    lines = [f"(X_{i} {float(v)!r})" for i, v in enumerate(x.double().tolist())]
    lines += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(y.double().tolist())]
    return "(" + "\n ".join(lines) + ")\n"


def write_counterexample(path: Path, x: torch.Tensor, y: torch.Tensor) -> None:
    path.write_text(counterexample_text(x, y))


# The answer words of each competition year's results: 2021's name the property, 2022's the
# satisfiability of the VNNLIB formula (which states the violation).
RESULT_WORDS = {
    "2021": {"holds": "holds", "violated": "violated", "unknown": "unknown", "timeout": "timeout", "error": "error"},
    "2022": {"holds": "unsat", "violated": "sat", "unknown": "unknown", "timeout": "timeout", "error": "error"},
}


def result_file_text(result: str, counterexample: tuple[torch.Tensor, torch.Tensor] | None = None) -> str:
    """A VNN-COMP 2022+ results file: `sat` / `unsat` / `unknown` / `timeout` / `error` on the first
    line; after `sat`, the witness `((X_0 v) ... (Y_0 v) ...)`."""
    word = RESULT_WORDS["2022"][result]
    if result == "violated" and counterexample is not None:
        return f"{word}\n{counterexample_text(*counterexample)}"
    return f"{word}\n"


def read_counterexample(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) from a counterexample file written by `write_counterexample`."""
    import re

    xs, ys = {}, {}
    for name, idx, val in re.findall(r"\(([XY])_(\d+)\s+([^\s()]+)\)", path.read_text()):
        (xs if name == "X" else ys)[int(idx)] = float(val)
    return (torch.tensor([xs[i] for i in range(len(xs))], dtype=torch.float64),
            torch.tensor([ys[i] for i in range(len(ys))], dtype=torch.float64))


def run_instance(
    inst: Instance,
    *,
    timeout: float | None,
    methods: tuple[str, ...] = METHODS,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    counterexample_dir: Path | None = None,
    models: dict | None = None,
    **options,
) -> InstanceResult:
    """Verify one instance (timeout None: the instance's own). Conversion time counts as prepare.
    `models` caches each network's conversion, or the reason it failed, across instances."""
    t0 = time.monotonic()
    models = models if models is not None else {}
    try:
        if inst.network not in models:
            try:
                conv = onnx_to_torch(inst.network, dtype=None)  # a float64 file's own weights, for the bounds
                models[inst.network] = (conv, conv.module.to(device), onnxruntime_function(inst.network, conv.input_shape))
            except Exception as e:  # noqa: BLE001 - kept, so the network's other instances fail fast with the same reason
                models[inst.network] = e
        if isinstance(models[inst.network], Exception):
            raise models[inst.network]
        conv, module, reference = models[inst.network]
        prop = read_vnnlib(inst.property)
        check_fits(prop, math.prod(conv.input_shape), math.prod(conv.output_shape), inst.network.name)
    except Exception as e:  # noqa: BLE001 - any failure of one instance is that instance's `error`
        return _error(inst, t0, "prepare", e)
    prepare = time.monotonic() - t0
    t1 = time.monotonic()
    try:
        res: SpecResult = verify_property(
            module, prop, conv.input_shape, methods=methods, timeout=timeout if timeout is not None else inst.timeout,
            seed=seed, reference=reference, **options,
        )
        ce_path = None
        if res.status == "violated" and counterexample_dir is not None:
            ce_path = counterexample_dir / counterexample_name(inst.network, inst.property)
            with atomic_path(ce_path) as tmp:  # complete or absent, even if the run is stopped mid-write
                write_counterexample(tmp, res.counterexample, res.outputs)
    except Exception as e:  # noqa: BLE001
        err = _error(inst, t1, "verify", e)
        err.prepare_seconds = prepare
        return err
    return InstanceResult(inst, res.status, res.seconds, prepare, res.method, ce_path, res.confirmed_by, res.stages)


def _error(inst: Instance, t0: float, stage: str, e: BaseException) -> InstanceResult:
    reason = (str(e).strip().splitlines() or [""])[0][:300]
    reason = f"{type(e).__name__}: {reason}" if not isinstance(e, InputError) else reason
    return InstanceResult(inst, "error", time.monotonic() - t0, 0.0, stages=[{"method": stage, "note": reason}])


_WORKER_MODELS: dict = {}


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _worker_run(inst: Instance, timeout: float | None, options: dict) -> InstanceResult:
    return run_instance(inst, timeout=timeout, models=_WORKER_MODELS, **options)


def run_benchmark(
    instances: list[Instance],
    *,
    timeout: float | None = None,
    on_instance: Callable[[InstanceResult], None] | None = None,
    jobs: int = 1,
    **options,
) -> list[InstanceResult]:
    """Run every instance; results come back in the order they are decided (input order for jobs=1)."""
    results = []
    # Each worker process holds its own torch and networks: more workers than instances or CPU cores
    # only cost memory (an executor of 10,000 spawned processes would exhaust it).
    jobs = min(jobs, len(instances), os.cpu_count() or 1)
    if jobs <= 1:
        models: dict = {}
        for inst in instances:
            r = run_instance(inst, timeout=timeout, models=models, **options)
            results.append(r)
            if on_instance is not None:
                on_instance(r)
        return results
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(_worker_run, inst, timeout, options): inst for inst in instances}
        for fut in as_completed(futures):
            try:
                r = fut.result()
            except Exception as e:  # noqa: BLE001 - a worker that died (e.g. out of memory)
                r = _error(futures[fut], time.monotonic(), "worker", e)
            results.append(r)
            if on_instance is not None:
                on_instance(r)
    return results


def result_line(r: InstanceResult, benchmark: str, words: str = "2021") -> str:
    """One results_csv line, the answer in the `words` year's words (`RESULT_WORDS`)."""
    net, prop = r.instance.csv_paths()
    return f"{benchmark},{net},{prop},{r.prepare_seconds:.6f},{RESULT_WORDS[words][r.result]},{r.seconds:.6f}"


def result_lines(results: list[InstanceResult], benchmark: str, words: str = "2021") -> list[str]:
    return [result_line(r, benchmark, words) for r in results]
