"""`robust vnncomp` on look-alikes of the VNN-COMP categories we have no files for, with a soundness check.

    python benchmarks/vnncomp_lookalikes.py [--categories acasxu eran ...] [--method crown alpha-crown bab]
        [--timeout S] [--folder DIR] [--json report.json]

Builds each category's folder with tests/vnncomp_lookalikes.py (networks, properties, instances.csv;
the module docstring says how the known answers are known), runs `python -m robustcli vnncomp` on
it as a user would (a separate process, the CSV's per-instance timeouts unless --timeout), and
prints one row per category: instances, holds / violated / unknown / timeout / error, how many
known answers were reached, and the problems tests/vnncomp_lookalikes.judge finds (an unsound
answer, an unconfirmed counterexample, a missing or malformed row, a timeout overrun by more than
max(1 s, 5%)). `--method` without ibp makes the CROWN family and branch and bound do the work IBP
otherwise does on the easy boxes. Exit status 1 when any problem is found.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import vnncomp_lookalikes as V  # noqa: E402

RESULTS = ("holds", "violated", "unknown", "timeout", "error")


def run_category(category: str, folder: Path, method: list[str] | None, timeout: float | None) -> dict:
    items = V.build(category, folder / category)
    inst = folder / category / "instances.csv"
    out = folder / category / "results.csv"
    cmd = [sys.executable, "-m", "robustcli", "vnncomp", str(inst), "--out", str(out)]
    cmd += ["--method", *method] if method else []
    cmd += ["--timeout", str(timeout)] if timeout else []
    if timeout:
        for it in items:
            it.timeout = timeout
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.monotonic() - t0
    rows = [r for r in csv.reader(out.open())] if out.exists() else []
    counts = Counter(r[4] for r in rows if len(r) == 6)
    got = {r[2][2:]: r[4] for r in rows if len(r) == 6}
    known = [it for it in items if it.expected is not None]
    problems = V.judge(items, out, folder / category / "results_counterexamples") if out.exists() else ["no results file"]
    if proc.returncode != 0:
        problems.append(f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1]}")
    if "Traceback" in proc.stderr:
        problems.append("a traceback on stderr")
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    return {
        "category": category, "instances": len(items), "counts": {k: counts[k] for k in RESULTS},
        "known": len(known), "known_reached": sum(got.get(it.property.name) == it.expected for it in known),
        "problems": problems, "errors": errors, "wall": wall,
        "rows": [{"network": r[1], "property": r[2], "result": r[4], "seconds": float(r[5])} for r in rows if len(r) == 6],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--categories", nargs="*", default=list(V.CATEGORIES), choices=list(V.CATEGORIES))
    ap.add_argument("--method", nargs="*", default=None, help="stages (default: robust's default, all)")
    ap.add_argument("--timeout", type=float, default=None, help="override the CSVs' per-instance timeouts")
    ap.add_argument("--folder", type=Path, default=None, help="where to build the folders (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="vnncomp-lookalikes-"))
    reports = []
    head = f"{'category':14s} {'inst':>4s} {'holds':>5s} {'viol':>5s} {'unkn':>5s} {'tout':>5s} {'err':>4s} {'known':>7s} {'unsound':>7s} {'wall':>7s}"
    print(head)
    for c in args.categories:
        rep = run_category(c, folder, args.method, args.timeout)
        reports.append(rep)
        k = rep["counts"]
        unsound = sum("UNSOUND" in p or "not confirmed" in p for p in rep["problems"])
        print(f"{c:14s} {rep['instances']:4d} {k['holds']:5d} {k['violated']:5d} {k['unknown']:5d} {k['timeout']:5d} "
              f"{k['error']:4d} {rep['known_reached']:3d}/{rep['known']:<3d} {unsound:7d} {rep['wall']:6.1f}s", flush=True)
        for p in rep["problems"] + rep["errors"]:
            print(f"    {p}")
    print(f"folders: {folder}; method: {' '.join(args.method) if args.method else 'default'}; "
          f"timeout: {args.timeout or 'per CSV'}")
    if args.json:
        args.json.write_text(json.dumps({"method": args.method, "timeout": args.timeout, "categories": reports}, indent=1))
    return 1 if any(r["problems"] for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
