"""Native CROWN vs auto_LiRPA 0.3's CROWN on one model: points per second and equal bounds.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/crown_speed.py --model mnist-cnn --n 16 --eps 0.02 0.1

Both bound the same margins C f(x) (C = e_y - e_j) over the Linf ball n [0, 1], in one process,
same threads, after one warm-up call each; the script prints the time per point, the ratio
(auto_LiRPA time / native time), and the largest difference of the bounds (native must never be
looser by more than 1e-5; it can be tighter because it intersects intermediate bounds with IBP).
`--dtype float32` is auto_LiRPA's own precision; float64 is what `robust certify` uses.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from robustcli.certify.bounders import CrownBounder, InputSet
from robustcli.certify.lirpa import LirpaBounder
from robustcli.certify.spec import margin_spec
from robustcli.session import open_workload


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
    for eps in args.eps:
        s = InputSet.ball(x, eps, "linf")
        native.lower(s.slice(slice(0, 2)), spec[:2])  # warm-up (dense block matrices are built once)
        lirpa.bounds(x[:2], eps, "linf", spec[:2], bound_upper=False)
        t0 = time.perf_counter()
        low_n = native.lower(s, spec)
        t_n = time.perf_counter() - t0
        t0 = time.perf_counter()
        low_l, _ = lirpa.bounds(x, eps, "linf", spec, bound_upper=False)
        t_l = time.perf_counter() - t0
        diff = (low_n - low_l).double()
        row = {"eps": eps, "native_s_per_point": t_n / args.n, "lirpa_s_per_point": t_l / args.n,
               "speedup": t_l / t_n, "max_abs_diff": float(diff.abs().max()), "native_looser_by": float((-diff).max()),
               "native_verified": int((low_n > 0).all(1).sum()), "lirpa_verified": int((low_l > 0).all(1).sum())}
        rows.append(row)
        print(f"eps {eps}: native {row['native_s_per_point']:.3f} s/pt, auto_LiRPA {row['lirpa_s_per_point']:.3f} s/pt, "
              f"speedup {row['speedup']:.2f}x, max |diff| {row['max_abs_diff']:.2e}, native looser by at most "
              f"{row['native_looser_by']:.2e}, verified {row['native_verified']} vs {row['lirpa_verified']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "n": args.n, "dtype": args.dtype, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
