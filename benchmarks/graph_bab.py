"""Branch and bound on graph models (certify/bab.py through certify/bab_network.py): how many of
the robustness properties the bound stages leave open it decides at a fixed timeout.

    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 19 python benchmarks/graph_bab.py --n 20 --eps 0.03 --timeout 20

The model (`--arch`): `resmlp` is Flatten, Linear 64 -> 32, ReLU, two residual blocks
Residual(Linear 32 -> 32, ReLU, Linear 32 -> 32) each followed by a ReLU, Linear 32 -> 10; `rescnn`
is Conv 1 -> 4 (3x3, pad 1), ReLU, Residual(Conv 4 -> 4, ReLU, Conv 4 -> 4), ReLU, Flatten, Linear
256 -> 32, ReLU, Linear 32 -> 10; `poolcnn` is Conv 1 -> 4 (3x3, pad 1), ReLU, MaxPool2d(2), Flatten,
Linear 64 -> 32, ReLU, Linear 32 -> 10 (64 inputs: ReLU splits, on the max pooling's ReLU form,
certify/maxpool_relus.py). Trained here for `--epochs` on scikit-learn's 8x8 digits (train
split, seeded). Properties: the Linf box of half-width `--eps` (clipped to [0, 1]) around each of
the first `--n` correctly classified test digits, violated iff another class scores at least the
label's (VNN-COMP's robustness form). Each property runs `verify_property` twice in the same
process: the cascade without branch and bound (attack, ibp, crown, alpha-crown) and with it, each
with `--timeout` seconds. Printed: the answers of both runs, the properties only branch and bound
decided, and any disagreement (a property `holds` in one run and `violated` in the other would be
a soundness failure: the script says so).
"""

from __future__ import annotations

import argparse
import collections
import time
import warnings

import torch
from torch import nn

from clean_training import train_clean  # beside this script
from robustcli.certify.spec_verify import verify_property
from robustcli.certify.vnnlib import parse_vnnlib, robustness_vnnlib
from robustcli.core.nn import Residual
from robustcli.data import load_digits


def resmlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    block = lambda: Residual(nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32)))  # noqa: E731
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), block(), nn.ReLU(), block(), nn.ReLU(),
                         nn.Linear(32, 10))


def rescnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    block = Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)))
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), block, nn.ReLU(), nn.Flatten(),
                         nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 10))


def poolcnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 32),
                         nn.ReLU(), nn.Linear(32, 10))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=("resmlp", "rescnn", "poolcnn"), default="resmlp")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--eps", type=float, default=0.03)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bab-bounds", choices=("auto", "reuse", "refresh"), default="auto")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)

    train, test = load_digits("train"), load_digits("test")
    xt, yt = torch.as_tensor(train.x, dtype=torch.float32), torch.as_tensor(train.y, dtype=torch.long)
    model = {"resmlp": resmlp, "rescnn": rescnn, "poolcnn": poolcnn}[args.arch](args.seed)
    loss = train_clean(model, xt, yt, args.epochs, args.seed)
    x, y = torch.as_tensor(test.x, dtype=torch.float32), torch.as_tensor(test.y, dtype=torch.long)
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).nonzero().flatten()
    print(f"{args.arch}: last training loss {loss:.3f}, test accuracy {len(correct) / len(y):.3f}; "
          f"eps {args.eps}, timeout {args.timeout} s, --bab-bounds {args.bab_bounds}")
    counts = {"cascade": collections.Counter(), "with bab": collections.Counter()}
    seconds = {"cascade": 0.0, "with bab": 0.0}
    only_bab, unsound = [], []
    notes: collections.Counter = collections.Counter()  # the bab stage's note where it decided nothing
    for i in correct[: args.n].tolist():
        lo, hi = (x[i] - args.eps).clamp(0, 1).flatten(), (x[i] + args.eps).clamp(0, 1).flatten()
        prop = parse_vnnlib(robustness_vnnlib(lo, hi, int(y[i]), 10))
        answers = {}
        for name, methods in (("cascade", ("attack", "ibp", "crown", "alpha-crown")),
                              ("with bab", ("attack", "ibp", "crown", "alpha-crown", "bab"))):
            t0 = time.monotonic()
            res = verify_property(model, prop, tuple(train.x.shape[1:]), methods=methods, timeout=args.timeout,
                                  seed=args.seed, bab_bounds=args.bab_bounds)
            seconds[name] += time.monotonic() - t0
            counts[name][res.status] += 1
            answers[name] = res
        a, b = answers["cascade"], answers["with bab"]
        if {a.status, b.status} == {"holds", "violated"}:
            unsound.append(i)
        if b.method == "bab" and b.status in ("holds", "violated"):
            only_bab.append((i, b.status, b.stages[-1].get("note", "")))
        elif a.status not in ("holds", "violated"):
            notes[b.stages[-1].get("note", "")] += 1
    for name in counts:
        print(f"{name:9s}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts[name].items()))
              + f"; {seconds[name]:.1f} s in all")
    print(f"decided by the bab stage: {len(only_bab)}")
    for i, status, note in only_bab:
        print(f"  test digit {i}: {status} ({note})")
    for note, k in notes.items():
        print(f"  left open ({k}): {note}")
    print("holds in one run and violated in the other: " + (", ".join(map(str, unsound)) if unsound else "none"))


if __name__ == "__main__":
    main()
