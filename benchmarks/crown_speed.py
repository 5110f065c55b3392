"""Native CROWN vs auto_LiRPA 0.3's CROWN on one model: time per point and equal bounds.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/crown_speed.py --model mnist-cnn --n 16 --eps 0.02 0.1

Both bound the same margins C f(x) (C = e_y - e_j) over the Linf ball n [0, 1], in one process,
same threads, after one warm-up call each. Time is the process's CPU time (`time.process_time`),
which a busy machine does not inflate; wall time is printed beside it. The ratio is auto_LiRPA's
time over native's.

Equal bounds: auto_LiRPA computes in float32, whose rounding on margins of magnitude 100 is about
1e-5 relative, so its bounds are also computed once in float64 (model and inputs cast; not timed)
and the native bounds must be within 1e-5 of those, never looser. `--dtype float32` runs the
native engine in auto_LiRPA's precision; float64 is what `robust certify` uses.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings

import torch

from robustcli.certify.bounders import CrownBounder, InputSet
from robustcli.certify.lirpa import LirpaBounder
from robustcli.certify.spec import margin_spec
from robustcli.session import open_workload


def timed(f):
    """(result, CPU seconds, wall seconds) of f()."""
    c0, w0 = time.process_time(), time.perf_counter()
    out = f()
    return out, time.process_time() - c0, time.perf_counter() - w0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mnist-cnn")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--eps", type=float, nargs="+", default=[0.02, 0.1])
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    w = open_workload(args.model, None, n=args.n, device=args.device)
    model = w.model.module.eval()
    x, y = w.data.x[: args.n].to(w.device), w.data.y[: args.n].to(w.device)
    spec = margin_spec(y, w.num_classes)
    dtype = getattr(torch, args.dtype)
    native = CrownBounder(model, x[:2], dtype=dtype)
    lirpa = LirpaBounder(model, x[:2], "crown")
    rows = []
    print(f"model {args.model}, n {args.n}, torch threads {torch.get_num_threads()}, native dtype {args.dtype}")
    lirpa64 = LirpaBounder(copy.deepcopy(model).double(), x[:2].double(), "crown")
    for eps in args.eps:
        s = InputSet.ball(x, eps, "linf")
        native.lower(s.slice(slice(0, 2)), spec[:2])  # warm-up
        lirpa.bounds(x[:2], eps, "linf", spec[:2], bound_upper=False)
        (low_n, t_n, w_n) = timed(lambda: native.lower(s, spec))
        ((low_l, _), t_l, w_l) = timed(lambda: lirpa.bounds(x, eps, "linf", spec, bound_upper=False))
        low_64, _ = lirpa64.bounds(x.double(), eps, "linf", spec.double(), bound_upper=False)
        diff = low_n.double() - low_64
        row = {"eps": eps, "native_cpu_s_per_point": t_n / args.n, "lirpa_cpu_s_per_point": t_l / args.n,
               "speedup_cpu": t_l / t_n, "native_wall_s_per_point": w_n / args.n, "lirpa_wall_s_per_point": w_l / args.n,
               "speedup_wall": w_l / w_n, "max_abs_diff_vs_lirpa64": float(diff.abs().max()),
               "native_looser_than_lirpa64_by": float((-diff).max()),
               "max_abs_diff_vs_lirpa32": float((low_n.double() - low_l.double()).abs().max()),
               "native_verified": int((low_n > 0).all(1).sum()), "lirpa_verified": int((low_l > 0).all(1).sum())}
        rows.append(row)
        print(f"eps {eps}: CPU native {row['native_cpu_s_per_point']:.4f} s/pt, auto_LiRPA {row['lirpa_cpu_s_per_point']:.4f}"
              f" s/pt, speed-up {row['speedup_cpu']:.2f}x (wall {row['speedup_wall']:.2f}x); bounds vs auto_LiRPA in"
              f" float64: max |diff| {row['max_abs_diff_vs_lirpa64']:.1e}, native looser by at most"
              f" {row['native_looser_than_lirpa64_by']:.1e} (vs its float32 run {row['max_abs_diff_vs_lirpa32']:.1e});"
              f" verified {row['native_verified']} vs {row['lirpa_verified']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "n": args.n, "dtype": args.dtype, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
