"""Native CROWN through max pooling (certify/dag_bounds.py) on MNIST CNNs: bounds against IBP and,
for kernel = stride (the only max pooling auto_LiRPA 0.3 bounds), against auto_LiRPA's CROWN,
measured in the same run.

    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 19 python benchmarks/maxpool_crown.py --n 8 --eps 0.01 0.02

Models (each trained here for `--epochs` on the first `--n-train` MNIST training images, seeded):
normalisation, Conv(1, 8, 3, pad 1), ReLU, max pooling P, Conv(8, 16, 3, pad 1, stride 2), ReLU,
Linear -> 64 -> 10, with P one of: kernel 2 stride 2; kernel 3 stride 2 padding 1; kernel 3
stride 1. Bounded: the margins e_y - e_j of the first `--n` test images over the Linf ball n [0, 1].
Printed per model and eps: mean lower bound and verified count for IBP, CROWN-IBP, CROWN,
alpha-CROWN (`--alpha-iterations`), auto_LiRPA CROWN where it runs (difference to native CROWN:
min/max, and with native CROWN's intermediate bounds not intersected with IBP's, as auto_LiRPA
computes them; auto_LiRPA in float32, as its max pooling fails in float64), and each method's CPU seconds per point. alpha-CROWN's loss stops
pulling on rows already above 0.01, so at radii where CROWN proves every margin it equals CROWN.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from torch import nn

from clean_training import train_clean  # beside this script
from robustcli.certify import dag_bounds as db
from robustcli.certify.bounders import InputSet, build_bounder
from robustcli.certify.spec import margin_spec
from robustcli.core.nn import Normalized

POOLS = {"k2s2": lambda: nn.MaxPool2d(2), "k3s2p1": lambda: nn.MaxPool2d(3, 2, 1), "k3s1": lambda: nn.MaxPool2d(3, 1)}


def pooled_cnn(pool: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    side = {"k2s2": 14, "k3s2p1": 14, "k3s1": 26}[pool]
    out = (side + 1) // 2
    return Normalized(nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), POOLS[pool](), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * out * out, 64), nn.ReLU(), nn.Linear(64, 10),
    ), [0.1307], [0.3081])  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--eps", type=float, nargs="+", default=[0.01, 0.02])
    p.add_argument("--n-train", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha-iterations", type=int, default=10)
    p.add_argument("--pools", nargs="+", default=list(POOLS), choices=list(POOLS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    from robustcli.certify.lirpa import lirpa_available
    from robustcli.data import load_mnist

    tr, te = load_mnist("train"), load_mnist("test")
    dev = torch.device(args.device)
    x, y = te.x[: args.n].to(dev), te.y[: args.n].to(dev)
    spec = margin_spec(y, 10)
    for pool in args.pools:
        model = pooled_cnn(pool, args.seed).to(dev)
        train_clean(model, tr.x[: args.n_train].to(dev), tr.y[: args.n_train].to(dev), args.epochs, args.seed)
        with torch.no_grad():
            acc = float((model(te.x[:1000].to(dev)).argmax(1).cpu() == te.y[:1000]).float().mean())
        print(f"{pool}: clean accuracy {acc:.3f} on 1000 test images; n {args.n}; device {dev}")
        methods = ["ibp", "crown-ibp", "crown", "alpha-crown"] + (["lirpa-crown"] if pool == "k2s2" and lirpa_available() else [])
        bounders = {m: build_bounder(m, model, x[:2], alpha_iterations=args.alpha_iterations) for m in methods}
        for eps in args.eps:
            s = InputSet.ball(x, eps, "linf")
            lows, secs = {}, {}
            for m, b in bounders.items():
                c0 = time.process_time() if dev.type == "cpu" else time.perf_counter()
                lows[m] = b.lower(s, spec).double()
                if dev.type == "cuda":  # kernels run asynchronously: wall time after they finish
                    torch.cuda.synchronize(dev)
                secs[m] = ((time.process_time() if dev.type == "cpu" else time.perf_counter()) - c0) / args.n
            row = ", ".join(f"{m} mean {float(l.mean()):.3f} verified {int((l > 0).all(1).sum())} ({secs[m]:.3f} s/pt)"
                            for m, l in lows.items())
            print(f"  eps {eps}: {row}")
            gain = lows["crown"] - lows["ibp"]
            print(f"    native CROWN minus IBP: min {float(gain.min()):.3g}, mean {float(gain.mean()):.3g}")
            if "lirpa-crown" in lows:
                diff = lows["crown"] - lows["lirpa-crown"]
                print(f"    native CROWN minus auto_LiRPA CROWN: min {float(diff.min()):.2e}, max {float(diff.max()):.2e}")
                # The same intermediate bounds as auto_LiRPA (CROWN's alone, not intersected with IBP's):
                # what is left is the max pooling relaxations' difference and float32 rounding
                # (auto_LiRPA 0.3's max pooling fails in float64: a scatter of mixed dtypes).
                dag = bounders["crown"].dag
                s64 = InputSet.ball(x.double(), eps, "linf")
                with torch.no_grad():
                    inter = db.crown_intermediate(dag, s64.lower, s64.upper, intersect_ibp=False)
                    same, _ = db.crown_spec(dag, s64.lower, s64.upper, spec.double(), bounds=inter)
                d64 = same - lows["lirpa-crown"]
                print(f"    same intermediate bounds (native float64, auto_LiRPA float32): native minus auto_LiRPA "
                      f"min {float(d64.min()):.2e}, max {float(d64.max()):.2e}")


if __name__ == "__main__":
    main()
