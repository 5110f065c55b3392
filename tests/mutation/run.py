"""Mutation check of the engines' critical modules with cosmic-ray (`make mutate`; not part of CI).

Each target pairs a module with the fast tests that guard it. cosmic-ray applies one mutation at
a time to the file in place (restoring it after), runs the tests, and records whether they
failed (killed) or passed (survived). Survivors are printed with line and operator and written
to `mutation-survivors.json`; docs/testing.md lists them with a verdict each.

    python tests/mutation/run.py                      # every target, a seeded quarter of the mutants
    python tests/mutation/run.py --sample 1 ibp       # one target, every mutant

Sampling: a fixed, seeded share of each target's mutants (random mutant sampling; Wong & Mathur
1995 found a 10-25% sample estimates the full mutation score closely) keeps the default run near
30 minutes on 2 cores; `--sample 1` runs them all (about 2 hours).
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTEST = f"{sys.executable} -m pytest -x -q -p no:cacheprovider -W ignore::DeprecationWarning"

# name: (module file, the functions or classes whose lines are mutated, tests that guard them).
# Only the maths is mutated (bounds, projections and steps, statistics, losses); the tests are
# unit tests, not CLI round trips, so each mutant costs seconds.
TARGETS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "ibp": (
        "certify/ibp.py",
        ("_L2Ball", "_State", "_intersect", "_per_point", "input_bounds", "_elementwise_affine", "_bn_affine",
         "_affine_radius", "_affine_row_norm_sq", "_affine", "_relu", "_merged_last_layer"),
        "tests/test_certify_ibp.py tests/test_certify_exact.py tests/test_certify_tightness.py",
    ),
    "geometry": (
        "attacks/geometry.py", ("LpBall",), "tests/test_attacks_geometry.py tests/test_attacks_fab.py tests/test_attacks.py"
    ),
    "losses": ("attacks/losses.py", ("other_max", "margin", "cross_entropy", "_dlr_scale", "dlr", "dlr_targeted"),
               "tests/test_attacks.py tests/test_strong_attacks.py"),
    "thresholds": (
        "defenses/thresholds.py",
        ("clopper_pearson_upper", "clopper_pearson_interval", "allowed_misses", "min_calibration_size", "choose_threshold"),
        "tests/test_defenses_threshold.py -k 'not cli and not attack'",
    ),
    "smoothing": (
        "certify/smoothing.py",
        ("noise_counts", "clopper_pearson_lower", "certify_smoothed", "predict_from_counts", "certified_accuracy"),
        "tests/test_certify_smoothing.py -k 'not pgd'",
    ),
}

# Mutations of what the module computes: arithmetic swaps (+ - * /), comparisons, numbers, unary
# signs, boolean operators, break/continue. Left out: swaps into bit, shift, modulo and power
# operators (on tensors of floats they mostly raise at once, so they only cost time), identity
# comparisons, and edits of strings and decorators, which change messages, not maths.
OPERATORS_EXCLUDED = re.compile(
    r"core/(ReplaceBinaryOperator_\w+_(BitOr|BitAnd|BitXor|LShift|RShift|Mod|FloorDiv|Pow)"
    r"|ReplaceComparisonOperator_\w+_(Is|IsNot|In|NotIn)|ReplaceComparisonOperator_(Is|IsNot|In|NotIn)_\w+"
    r"|RemoveDecorator|ZeroIterationForLoop)$"
)


def _config(module: str, tests: str) -> str:
    return f"""[cosmic-ray]
module-path = "{module}"
timeout = 120.0
excluded-modules = []
test-command = "{PYTEST} {tests}"

[cosmic-ray.distributor]
name = "local"
"""


def _line_ranges(path: Path, names: tuple[str, ...]) -> list[tuple[int, int]]:
    """Line spans of the named top-level functions and classes; the whole file when none are named."""
    if not names:
        return [(1, 10**9)]
    tree = ast.parse(path.read_text())
    return [(n.lineno, n.end_lineno) for n in tree.body if getattr(n, "name", None) in names]


def _skip_outside(session: Path, ranges: list[tuple[int, int]], sample: float = 1.0, seed: int = 0) -> None:
    """Marks as skipped (as cosmic-ray's filters do) the mutations outside `ranges`, those by an
    excluded operator, and, with sample < 1, those not in the seeded sample."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    rng = random.Random(seed)
    with use_db(str(session), WorkDB.Mode.open) as db:
        items = sorted(db.pending_work_items, key=lambda i: (i.mutations[0].start_pos, i.mutations[0].operator_name, i.mutations[0].occurrence))
        for item in items:
            line = item.mutations[0].start_pos[0]
            if OPERATORS_EXCLUDED.match(item.mutations[0].operator_name) or not any(a <= line <= b for a, b in ranges):
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="outside the critical functions"))
            elif rng.random() >= sample:
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="not in the sample"))


def run_target(name: str, module: str, functions: tuple[str, ...], tests: str, work: Path, sample: float) -> dict:
    if not (ROOT / module).exists():
        return {"target": name, "module": module, "skipped": "module not present"}
    config, session = work / f"{name}.toml", work / f"{name}.sqlite"
    config.write_text(_config(module, tests))
    cr = [sys.executable, "-m", "cosmic_ray.cli"]
    start = time.monotonic()
    subprocess.run([*cr, "init", str(config), str(session)], cwd=ROOT, check=True)
    _skip_outside(session, _line_ranges(ROOT / module, functions), sample)
    original = (ROOT / module).read_bytes()
    try:
        subprocess.run([*cr, "exec", str(config), str(session)], cwd=ROOT, check=True)
    finally:  # an interrupted exec can leave the last mutant in the file
        (ROOT / module).write_bytes(original)
    dump = subprocess.run([*cr, "dump", str(session)], cwd=ROOT, check=True, capture_output=True, text=True)
    killed, survived = 0, []
    for line in dump.stdout.splitlines():
        job, result = json.loads(line)
        if result is None or result["worker_outcome"] == "skipped":
            continue
        if result["test_outcome"] == "survived":
            m = job["mutations"][0]
            survived.append({"line": m["start_pos"][0], "operator": m["operator_name"], "occurrence": m["occurrence"], "diff": result.get("diff", "")})
        else:
            killed += 1
    return {"target": name, "module": module, "killed": killed, "survived": survived, "seconds": round(time.monotonic() - start)}


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # so that `finally` puts the module back when the run is stopped


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Mutation check of the engines' critical functions.")
    parser.add_argument("targets", nargs="*", help=f"some of {sorted(TARGETS)} (default: all)")
    parser.add_argument("--sample", type=float, default=0.25, help="share of each target's mutants to run (0, 1]")
    args = parser.parse_args(argv)
    if not 0 < args.sample <= 1:
        print(f"error: --sample must lie in (0, 1], got {args.sample}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    chosen = args.targets or list(TARGETS)
    unknown = set(chosen) - set(TARGETS)
    if unknown:
        print(f"error: unknown target(s) {sorted(unknown)}; choose from {sorted(TARGETS)}", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            results.append(run_target(name, *TARGETS[name], Path(tmp), args.sample))
    total_s = sum(r.get("seconds", 0) for r in results)
    print(f"sample {args.sample:g} of each target's mutants; {total_s} s in all")
    (ROOT / "mutation-survivors.json").write_text(json.dumps(results, indent=2) + "\n")
    for r in results:
        if "skipped" in r:
            print(f"{r['target']:<11} {r['module']:<26} skipped: {r['skipped']}")
            continue
        total = r["killed"] + len(r["survived"])
        print(f"{r['target']:<11} {r['module']:<26} {r['killed']}/{total} killed in {r['seconds']} s")
        for s in r["survived"]:
            print(f"    survived: line {s['line']}  {s['operator']} #{s['occurrence']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
