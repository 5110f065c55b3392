"""VNN-COMP 2021 mnistfc with `robust`'s verifier, beside alpha-beta-CROWN, with a soundness check.

    python benchmarks/vnncomp_mnistfc.py --timeout 5 [--data ../shared/vnncomp2021-mnistfc]
        [--limit N] [--networks 256x2 256x4] [--out results.csv] [--json report.json]
        [--device cuda] [--threads 2]

Runs every instance of the instances CSV (or the first N / the chosen networks) with the
per-instance timeout given here (the competition's was 120 s, alpha-beta-CROWN's answers in
ground_truth.csv are from its own run), counts holds / violated / unknown / timeout, and checks
soundness against ground_truth.csv: no `holds` where any tool reported violated (a counterexample
exists), no `violated` where the consensus is holds, and every `violated` confirmed by onnxruntime.
Exit status 1 if a soundness check fails.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from robustcli.certify.spec_verify import BAB_BOUNDS, METHODS  # noqa: E402
from robustcli.certify.vnncomp import read_instances, result_lines, run_benchmark  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "vnncomp2021-mnistfc"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per instance")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--networks", nargs="*", default=None, help="e.g. 256x2 256x4")
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--alpha-iterations", type=int, default=20)
    ap.add_argument("--bab-bounds", choices=BAB_BOUNDS, default="auto")
    ap.add_argument("--properties", nargs="*", default=None,
                    help="only these instances, as NETWORK:PROPERTY, e.g. 256x4:prop_5_0.03")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads of the one process")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    instances = read_instances(args.data / "mnistfc_instances.csv")
    if args.networks:
        instances = [i for i in instances if any(n in i.network.name for n in args.networks)]
    if args.properties:
        wanted = {tuple(p.split(":")) for p in args.properties}
        instances = [i for i in instances if any(n in i.network.name and i.property.stem == q for n, q in wanted)]
    instances = instances[: args.limit]
    truth = {(r["network"], r["property"]): r for r in csv.DictReader((args.data / "ground_truth.csv").open())}

    t0 = time.monotonic()

    def progress(r) -> None:
        gt = truth.get((r.instance.network.name, r.instance.property.name), {})
        print(f"{r.instance.network.name:22s} {r.instance.property.name:20s} {r.result:9s} {r.method or '-':12s}"
              f"{r.seconds:6.2f}s   consensus {gt.get('consensus', '?'):9s} abcrown {gt.get('abcrown_result', '?')}",
              flush=True)

    results = run_benchmark(instances, timeout=args.timeout, methods=tuple(args.methods), seed=args.seed,
                            alpha_iterations=args.alpha_iterations, bab_bounds=args.bab_bounds, on_instance=progress,
                            device=torch.device(args.device),
                            counterexample_dir=args.out.parent if args.out else None)
    wall = time.monotonic() - t0

    ours = Counter(r.result for r in results)
    abcrown = Counter()
    unsound: list[str] = []
    missing = []
    for r in results:
        key = (r.instance.network.name, r.instance.property.name)
        gt = truth.get(key)
        if gt is None:  # ground_truth.csv covers 89 of the 90 instances
            missing.append(f"{key[0]} {key[1]}: {r.result}")
            continue
        abcrown[gt["abcrown_result"]] += 1
        if r.result == "holds" and (int(gt["violated_votes"]) > 0 or gt["abcrown_result"] == "violated"):
            unsound.append(f"{key}: holds, but {gt['violated_votes']} tools found a counterexample")
        if r.result == "violated" and (gt["consensus"] == "holds" or r.confirmed_by != "onnxruntime"):
            unsound.append(f"{key}: violated (confirmed by {r.confirmed_by}), consensus {gt['consensus']}")
    keys = [(r.instance.network.name, r.instance.property.name) for r in results]
    solved_by_ab = {k for k in keys if k in truth and truth[k]["abcrown_result"] in ("holds", "violated")}
    ours_solved = {k for k, r in zip(keys, results) if k in truth and r.result in ("holds", "violated")}
    ours_gt = Counter(r.result for k, r in zip(keys, results) if k in truth)

    print()
    print(f"instances run: {len(results)}  timeout {args.timeout:g}s each  methods {' '.join(args.methods)}  "
          f"wall {wall:.0f}s  torch threads {torch.get_num_threads()}")
    print(f"{'':18s}{'holds':>7s}{'violated':>10s}{'unknown':>9s}{'timeout':>9s}")
    print(f"{'robust (ours)':18s}{ours['holds']:7d}{ours['violated']:10d}{ours['unknown']:9d}{ours['timeout']:9d}"
          f"   (all {len(results)} instances run)")
    print(f"{'  same 89 as GT':18s}{ours_gt['holds']:7d}{ours_gt['violated']:10d}{ours_gt['unknown']:9d}"
          f"{ours_gt['timeout']:9d}   (the instances ground_truth.csv covers)")
    print(f"{'alpha-beta-CROWN':18s}{abcrown['holds']:7d}{abcrown['violated']:10d}{abcrown['unknown']:9d}"
          f"{abcrown['timeout']:9d}   (its VNN-COMP 2021 run, 120 s timeout, GPU)")
    print(f"solved by both: {len(ours_solved & solved_by_ab)}, only by us: {len(ours_solved - solved_by_ab)}, "
          f"only by alpha-beta-CROWN: {len(solved_by_ab - ours_solved)}")
    for m in missing:
        print(f"not in ground_truth.csv: {m}")
    print(f"soundness violations vs ground truth: {len(unsound)}")
    for u in unsound:
        print("  UNSOUND", u)
    if args.out:
        args.out.write_text("\n".join(result_lines(results, "mnistfc")) + "\n")
    if args.json:
        args.json.write_text(json.dumps({
            "timeout": args.timeout, "methods": args.methods, "device": args.device, "threads": args.threads,
            "wall_seconds": wall, "counts": dict(ours),
            "abcrown_counts": dict(abcrown), "counts_on_ground_truth": dict(ours_gt), "unsound": unsound,
            "not_in_ground_truth": missing, "results": [r.summary() for r in results],
        }, indent=2) + "\n")
    return 1 if unsound else 0


if __name__ == "__main__":
    sys.exit(main())
