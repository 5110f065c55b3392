"""Verified points of sigmoid / GELU MLPs on sklearn digits: IBP vs native CROWN vs auto_LiRPA CROWN.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/activation_crown.py --n 100 --eps 0.005 0.01 0.02 0.04

Trains (seeded, Adam, full batch) a 64-64-64-10 MLP per activation on 1,297 of the 1,797 digits
(pixels / 16, in [0, 1]) and bounds the margins of the first --n of the other 500 over the Linf
ball n [0, 1] with every method; a point counts as verified when it is classified correctly and
every margin lower bound is > 0. Prints what it measured: verified points and seconds per method
(one call for all points). Native CROWN relaxes sigmoid and GELU with certify/activation_lines.py;
native IBP refuses GELU (not monotone), auto_LiRPA 0.3 fails on it. Not a test: run on demand.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch
from torch import nn

from robustcli.certify.bounders import InputSet, build_bounder
from robustcli.certify.lirpa import lirpa_available
from robustcli.certify.spec import margin_spec


def digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:500], perm[500:]
    return x[train], y[train], x[test], y[test]


def mlp(act: type[nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), act(), nn.Linear(64, 64), act(), nn.Linear(64, 10))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--eps", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.04])
    p.add_argument("--steps", type=int, default=300, help="full-batch Adam steps (0: the random network)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=["ibp", "crown-ibp", "crown", "alpha-crown", "lirpa-crown", "lirpa-alpha-crown"])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    xtr, ytr, xte, yte = digits(args.seed)
    x, y = xte[: args.n], yte[: args.n]
    rows = []
    print(f"torch threads {torch.get_num_threads()}, auto_LiRPA {'installed' if lirpa_available() else 'missing'}")
    for name, act in (("sigmoid", nn.Sigmoid), ("gelu", nn.GELU)):
        model = train(mlp(act, args.seed), xtr, ytr, args.steps)
        with torch.no_grad():
            pred = model(x).argmax(1)
        correct = pred == y
        spec = margin_spec(y, 10)
        print(f"\n{name} MLP 64-64-64-10, clean accuracy {float(correct.float().mean()):.0%} on {args.n} test points")
        print(f"{'method':<12}" + "".join(f"{'eps ' + str(e):>16}" for e in args.eps))
        for method in args.methods:
            cells = []
            for eps in args.eps:
                try:
                    bounder = build_bounder(method, model, x[:2], alpha_iterations=20, norm="linf")
                    t0 = time.perf_counter()
                    low = bounder.lower(InputSet.ball(x, eps, "linf"), spec)
                    seconds = time.perf_counter() - t0
                    ok = int(((low > 0).all(1) & correct).sum())
                    cells.append(f"{ok:>3} ({seconds:6.2f} s)")
                    rows.append({"net": name, "method": method, "eps": eps, "verified": ok, "n": args.n,
                                 "seconds": seconds})
                except Exception as e:  # noqa: BLE001 - a refusal is a result here
                    cells.append(f"{'refused':>14}")
                    rows.append({"net": name, "method": method, "eps": eps, "refused": str(e).splitlines()[0][:200]})
            print(f"{method:<12}" + "".join(f"{c:>16}" for c in cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
