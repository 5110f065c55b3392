"""Native graph CROWN (certify/dag_bounds.py) vs auto_LiRPA 0.3's CROWN on a residual MNIST CNN:
seconds per point and equal bounds, measured in the same run.

    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 19 python benchmarks/dag_crown_speed.py --n 8 --eps 0.005 0.01 0.02
    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 19 python benchmarks/dag_crown_speed.py --n 2 --eps 0.04 --alpha-iterations 10

The model: normalisation, a strided 3x3 conv (8 x 14 x 14), two residual blocks (identity shortcut
with BatchNorm in the body; a strided block to 16 x 7 x 7 with a 1x1 conv shortcut), each add
followed by a ReLU, then Linear 784 -> 64 -> 10. It is trained here for `--epochs` on the first
`--n-train` official MNIST training images (seeded), so its unstable neurons are those of a
naturally trained network; the bounded points are the first `--n` test images, C = e_y - e_j.

Both engines bound the same margins over the Linf ball n [0, 1], in one process, same threads,
after one warm-up call each; time is process CPU time (wall beside it); the ratio is auto_LiRPA's
time over native's. Native runs in float64 (what `robust certify` uses), auto_LiRPA in float32; its
bounds are also computed once in float64 (not timed). Equality: the native engine with CROWN's
intermediate bounds alone (`intersect_ibp=False`, what auto_LiRPA computes) against auto_LiRPA in
float64; the default native bound (intermediate bounds also intersected with IBP's) is printed
beside it with its gain.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch
from torch import nn

from clean_training import train_clean  # beside this script
from robustcli.certify import dag_bounds as db
from robustcli.certify.bounders import CrownBounder, InputSet
from robustcli.certify.lirpa import LirpaBounder
from robustcli.certify.spec import margin_spec
from robustcli.core.nn import Normalized, Residual


def resnet_mnist(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    block1 = Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)))
    block2 = Residual(nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)),
                      nn.Conv2d(8, 16, 1, stride=2))
    return Normalized(nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), block1, nn.ReLU(), block2, nn.ReLU(), nn.Flatten(),
        nn.Linear(16 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
    ), [0.1307], [0.3081])  # fmt: skip


def timed(f, device: torch.device = torch.device("cpu")):
    """(result, seconds, wall seconds): CPU time of the process on a CPU, wall time after the kernels
    finish on CUDA (where the host's CPU time says nothing of the work)."""
    c0, w0 = time.process_time(), time.perf_counter()
    out = f()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        wall = time.perf_counter() - w0
        return out, wall, wall
    return out, time.process_time() - c0, time.perf_counter() - w0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--eps", type=float, nargs="+", default=[0.005, 0.01])
    p.add_argument("--n-train", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha-iterations", type=int, default=0,
                   help="also time alpha-CROWN (native vs auto_LiRPA) with this many iterations")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    from robustcli.data import load_mnist

    tr, te = load_mnist("train"), load_mnist("test")
    dev = torch.device(args.device)
    model = resnet_mnist(args.seed).to(dev)
    loss = train_clean(model, tr.x[: args.n_train].to(dev), tr.y[: args.n_train].to(dev), args.epochs, args.seed)
    model.eval()
    x, y = te.x[: args.n].to(dev), te.y[: args.n].to(dev)
    with torch.no_grad():
        acc = float((model(te.x[:1000].to(dev)).argmax(1).cpu() == te.y[:1000]).float().mean())
    spec = margin_spec(y, 10)
    print(f"residual MNIST CNN, trained {args.epochs} epoch(s) on {args.n_train} images (last loss {loss:.3f}, "
          f"clean accuracy {acc:.3f} on 1000 test images); n {args.n}, device {dev}, torch threads {torch.get_num_threads()}")
    native = CrownBounder(model, x[:2])
    assert native.dag is not None, "expected the graph engine"
    lirpa = LirpaBounder(model, x[:2], "crown")
    lirpa64 = LirpaBounder(copy.deepcopy(model).double(), x[:2].double(), "crown")
    for eps in args.eps:
        s = InputSet.ball(x, eps, "linf")
        native.lower(s.slice(slice(0, 2)), spec[:2])  # warm-up
        lirpa.bounds(x[:2], eps, "linf", spec[:2], bound_upper=False)
        low_n, t_n, w_n = timed(lambda: native.lower(s, spec), dev)
        (low_l, _), t_l, w_l = timed(lambda: lirpa.bounds(x, eps, "linf", spec, bound_upper=False), dev)
        low_64, _ = lirpa64.bounds(x.double(), eps, "linf", spec.double(), bound_upper=False)
        s64 = InputSet.ball(x.double(), eps, "linf")
        dag = native.dag
        with torch.no_grad():
            inter = db.crown_intermediate(dag, s64.lower, s64.upper, intersect_ibp=False)
            low_same, _ = db.crown_spec(dag, s64.lower, s64.upper, spec.double(), bounds=inter)
            unstable = sum(int(((l < 0) & (u > 0)).sum()) for l, u in
                           db.crown_intermediate(dag, s64.lower, s64.upper).values()) / args.n
        same = float((low_same - low_64).abs().max())
        gain = low_n.double() - low_64
        clock = "CPU" if dev.type == "cpu" else "wall"
        print(f"eps {eps}: {clock} native {t_n / args.n:.4f} s/pt, auto_LiRPA {t_l / args.n:.4f} s/pt, "
              f"ratio (auto_LiRPA / native) {t_l / t_n:.2f}x (wall {w_l / w_n:.2f}x); unstable neurons per point "
              f"{unstable:.0f}; same relaxation vs auto_LiRPA float64: max |diff| {same:.1e}; default native minus "
              f"auto_LiRPA: min {float(gain.min()):.1e}, max {float(gain.max()):.1e}; verified "
              f"{int((low_n > 0).all(1).sum())} native vs {int((low_l > 0).all(1).sum())} auto_LiRPA of {args.n}")
        if args.alpha_iterations > 0:
            alpha_n = CrownBounder(model, x[:2], alpha_iterations=args.alpha_iterations)
            alpha_l = LirpaBounder(model, x[:2], "alpha-crown", alpha_iterations=args.alpha_iterations)
            a_n, ta_n, _ = timed(lambda: alpha_n.lower(s, spec), dev)
            (a_l, _), ta_l, _ = timed(lambda: alpha_l.bounds(x, eps, "linf", spec, bound_upper=False), dev)
            print(f"  alpha-CROWN ({args.alpha_iterations} iterations): {clock} native {ta_n / args.n:.2f} s/pt, auto_LiRPA "
                  f"{ta_l / args.n:.2f} s/pt, ratio {ta_l / ta_n:.2f}x; mean gain over CROWN native "
                  f"{float((a_n - low_n).mean()):.3f}, auto_LiRPA {float((a_l - low_l).mean()):.3f}; mean bound native "
                  f"{float(a_n.mean()):.3f}, auto_LiRPA {float(a_l.mean()):.3f}")


if __name__ == "__main__":
    main()
