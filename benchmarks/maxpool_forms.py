"""Max pooling relaxed two ways, per margin row: DeepPoly's lines (certify/dag_bounds.py) against
CROWN's ReLU lines on the pooling's ReLU form (certify/maxpool_relus.py), and both at once
(certify/maxpool_forms.py), for CROWN and alpha-CROWN, measured in the same run.

    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 19 python benchmarks/maxpool_forms.py --data digits --n 20 --eps 0.03 0.06

Models: `--data digits`: graph_bab.py's poolcnn (Conv 1 -> 4 3x3 pad 1, ReLU, max pooling P,
Flatten, Linear -> 32, ReLU, Linear 32 -> 10) on scikit-learn's 8x8 digits, trained `--epochs`;
`--data mnist`: maxpool_crown.py's CNNs (Conv 1 -> 8, ReLU, P, Conv 8 -> 16 stride 2, ReLU,
Linear -> 64 -> 10) trained 1 epoch on 6,000 MNIST images. P: kernel 2 stride 2 (`k2s2`) or the
overlapping kernel 3 stride 2 padding 1 (`k3s2p1`). Bounded: the 9 margins e_y - e_j of the first
`--n` test points (correctly classified or not) over the Linf ball of radius eps in [0, 1].

Printed per model and eps, per method (CROWN; alpha-CROWN with `--alpha-iterations`, every row
optimised, as `robust certify` does): mean lower bound and rows > 0 of the DeepPoly form ("dp"),
the ReLU form ("relu") and both ("both": intersected intermediate bounds, larger row); how many
rows each single form wins by more than 1e-9, the largest win of each, and CPU seconds per point.
Then the dataset bounder (`robust certify --method crown / alpha-crown`, certify/bounders.py):
verified points and seconds per point with DeepPoly's lines alone and with both forms on the
points DeepPoly's CROWN bound leaves open.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from torch import nn

from clean_training import train_clean  # beside this script
from robustcli.certify import dag_bounds as db
from robustcli.certify import maxpool_forms as mf
from robustcli.certify.bounders import InputSet, build_bounder
from robustcli.certify.spec import margin_spec

POOLS = {"k2s2": lambda: nn.MaxPool2d(2), "k3s2p1": lambda: nn.MaxPool2d(3, 2, 1)}


def digits_cnn(pool: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), POOLS[pool](), nn.Flatten(), nn.Linear(64, 32),
                         nn.ReLU(), nn.Linear(32, 10))


def mnist_cnn(pool: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), POOLS[pool](),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 7 * 7, 64),
                         nn.ReLU(), nn.Linear(64, 10))


def timed(f):
    c0 = time.process_time()
    out = f()
    return out, time.process_time() - c0


def report(name: str, dp: torch.Tensor, relu: torch.Tensor, both: torch.Tensor, secs: dict[str, float], n: int) -> None:
    tol = 1e-9
    wins_r, wins_d = relu - dp > tol, dp - relu > tol
    cols = ", ".join(f"{k} mean {float(v.mean()):.3f} rows>0 {int((v > 0).sum())} ({1000 * secs[k] / n:.1f} ms/pt)"
                     for k, v in (("dp", dp), ("relu", relu), ("both", both)))
    print(f"    {name}: {cols}")
    print(f"      rows {dp.numel()}: relu better {int(wins_r.sum())} (max {float((relu - dp).max()):.3g}), "
          f"dp better {int(wins_d.sum())} (max {float((dp - relu).max()):.3g}); both - max(dp, relu): "
          f"min {float((both - torch.maximum(dp, relu)).min()):.3g}, max {float((both - torch.maximum(dp, relu)).max()):.3g}; "
          f"points verified dp {int((dp > 0).all(1).sum())} relu {int((relu > 0).all(1).sum())} both {int((both > 0).all(1).sum())}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("digits", "mnist"), default="digits")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--eps", type=float, nargs="+", default=[0.03, 0.06])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha-iterations", type=int, default=20)
    p.add_argument("--pools", nargs="+", default=list(POOLS), choices=list(POOLS))
    p.add_argument("--no-alpha", action="store_true")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    if args.data == "digits":
        from robustcli.data import load_digits

        tr, te = load_digits("train"), load_digits("test")
        xt, yt = torch.as_tensor(tr.x, dtype=torch.float32), torch.as_tensor(tr.y)
        build, epochs = digits_cnn, args.epochs
    else:
        from robustcli.data import load_mnist

        tr, te = load_mnist("train"), load_mnist("test")
        xt, yt = tr.x[:6000], tr.y[:6000]
        build, epochs = mnist_cnn, 1
    x, y = torch.as_tensor(te.x[: args.n], dtype=torch.float32), torch.as_tensor(te.y[: args.n])
    C = margin_spec(y, 10).double()
    for pool in args.pools:
        model = build(pool, args.seed)
        train_clean(model, xt, yt, epochs, args.seed)
        dag = db.Dag.of(model, tuple(x.shape[1:]))
        forms = mf.TwoForms.of(dag)
        print(f"{args.data} {pool}: ReLU form has {len(forms.relu.relus)} ReLU nodes (DeepPoly form {len(dag.relus)})")
        for eps in args.eps:
            s = InputSet.ball(x.double(), eps, "linf")
            lo, hi = s.lower, s.upper
            print(f"  eps {eps}:")
            secs: dict[str, float] = {}
            with torch.no_grad():
                (dp, bd), secs["dp"] = timed(lambda: db.crown_spec(dag, lo, hi, C))
                (relu, br), secs["relu"] = timed(lambda: db.crown_spec(forms.relu, lo, hi, C))
                (both, bb), secs["both"] = timed(lambda: mf.crown_spec(forms, lo, hi, C))
            report("CROWN", dp, relu, both, secs, args.n)
            # what `robust certify --method crown` does: DeepPoly's lines, both forms on open points only
            for method in ("crown",) + (() if args.no_alpha else ("alpha-crown",)):
                b = build_bounder(method, model, x[:2], alpha_iterations=args.alpha_iterations)
                alone = build_bounder(method, model, x[:2], alpha_iterations=args.alpha_iterations)
                alone.forms = None
                (lb, tb), (la, ta) = timed(lambda: b.lower(s, C)), timed(lambda: alone.lower(s, C))
                print(f"    bounder {method}: DeepPoly alone {int((la > 0).all(1).sum())} points verified "
                      f"({1000 * ta / args.n:.1f} ms/pt), both on open points {int((lb > 0).all(1).sum())} ({1000 * tb / args.n:.1f} ms/pt); "
                      f"mean {float(la.mean()):.3f} -> {float(lb.mean()):.3f}")
            if args.no_alpha:
                continue
            it = args.alpha_iterations
            kw = dict(iterations=it, stop_when_positive=False)
            adp, secs["dp"] = timed(lambda: db.alpha_crown_spec(dag, lo, hi, C, None, bd, **kw))
            arelu, secs["relu"] = timed(lambda: db.alpha_crown_spec(forms.relu, lo, hi, C, None, br, **kw))
            aboth, secs["both"] = timed(lambda: mf.alpha_crown_spec(forms, lo, hi, C, None, bb, **kw))
            report(f"alpha-CROWN ({it} it.)", adp, arelu, aboth, secs, args.n)


if __name__ == "__main__":
    main()
