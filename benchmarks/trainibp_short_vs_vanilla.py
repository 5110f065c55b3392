"""Short warmup (Shi et al. 2021) vs vanilla IBP training with the same budget, on `--data mnist`.

For each eps: train the same architecture with `--recipe short` (IBP init, BN, warmup
regularisers from the eps = 0 epoch, ramp over 2/7 of the run, robust loss alone once eps > 0)
and `--recipe vanilla` (default init, no regularisers, ramp over half the run), same seed, data,
epochs, optimiser and lr decay. The budget is either `--epochs`, or `--budget-s` seconds of
training per run: a calibration times a few training steps of the short recipe (the dearer one:
it adds the regulariser terms) and both runs get the epochs that fit. After every epoch the
clean and IBP-verified accuracy at eps_max on the first `--curve-n` test points are measured (not
counted in the training time); at the end, clean and IBP-verified error and PGD-40 error on the
whole test split (or `--n-test` points). Reported per run: those errors, the training wall time,
the first epoch at which the run's curve reaches the vanilla run's final verified accuracy, and,
below the table, the published verified errors on MNIST to set them against (full 60,000-image
training set, far larger networks and budgets: a reference point, not a like-for-like figure).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/trainibp_short_vs_vanilla.py \
        --arch mnist-cnn-bn --eps 0.3 --budget-s 1800 --json out/trainibp_bench.json

Prints what it measured (and which data set and split sizes ran); nothing is hard-coded but the
published reference figures, which are labelled as such.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from robustcli.attacks.evaluate import evaluate
from robustcli.attacks.registry import make_attack
from robustcli.certify.training import _step_loss, ibp_verified_accuracy, num_classes_of, recipe_config, train_ibp
from robustcli.commands.train_ibp import build_model
from robustcli.data import load_dataset


# "short-plain": the short schedule with vanilla's init and no regularisers (an ablation that
# separates the shorter ramp from IBP init + warmup regularisers).
# Published verified errors on the official MNIST test set (../shared/papers.md), by eps.
PUBLISHED = {
    0.3: ["CROWN-IBP (Zhang et al. 2020): 6.68% verified error"],
    0.4: ["Shi et al. 2021 (CNN-7, 70 epochs): 10.98% verified error",
          "CROWN-IBP (Zhang et al. 2020): 12.46% verified error"],
}

VARIANTS = {
    "vanilla": ("vanilla", {}),
    "short": ("short", {}),
    "short-plain": ("short", {"init": "default", "regularize": False}),
}


def calibrate_epochs(eps: float, args, train) -> tuple[int, float]:
    """(epochs of the short recipe that fit in --budget-s, measured seconds per training step)."""
    config = recipe_config("short", eps, 7, batch_size=args.batch_size, seed=args.seed)
    model = build_model(args.arch, "mnist", (), (), config.init, args.seed).train()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = config.schedule(10)
    classes = num_classes_of(model, train.x[:1])
    steps = 8
    t0 = time.perf_counter()
    for k in range(steps):
        xb = train.x[k * config.batch_size : (k + 1) * config.batch_size]
        yb = train.y[k * config.batch_size : (k + 1) * config.batch_size]
        step = 10 + k  # in the ramp: bounds and regularisers both run
        loss, _, _ = _step_loss(model, xb, yb, schedule(step), step, schedule, config, classes, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    per_step = (time.perf_counter() - t0) / steps
    steps_per_epoch = max(1, len(train) // config.batch_size)
    return max(2, int(args.budget_s // (per_step * steps_per_epoch))), per_step


def run(name: str, eps: float, epochs: int, args, train, test) -> dict:
    recipe, overrides = VARIANTS[name]
    config = recipe_config(recipe, eps, epochs, batch_size=args.batch_size, seed=args.seed, **overrides)
    model = build_model(args.arch, "mnist", (), (), config.init, args.seed)
    curve: list[dict] = []
    probe = test.head(args.curve_n)

    def on_epoch(stats) -> None:
        clean, verified = ibp_verified_accuracy(model, probe.x, probe.y, eps)
        curve.append({"epoch": stats.epoch + 1, "eps": stats.eps, "loss": stats.loss, "clean": clean, "verified": verified})
        print(
            f"  {name:11s} eps={eps:g} epoch {stats.epoch + 1:2d}/{epochs}  train eps={stats.eps:.3f}  "
            f"loss={stats.loss:.3f}  clean={clean:.3f}  verified={verified:.3f}  ({stats.time_s:.1f}s)",
            flush=True,
        )

    result = train_ibp(model, train.x, train.y, config, on_epoch=on_epoch)
    clean, verified = ibp_verified_accuracy(model, test.x, test.y, eps)
    t0 = time.perf_counter()
    ev = evaluate(model, test.x, test.y, [(make_attack("pgd", steps=40), [eps])], device=torch.device("cpu"), seed=0)
    return {
        "recipe": name,
        "eps": eps,
        "epochs": epochs,
        "config": config.as_dict(),
        "clean": clean,
        "pgd": ev.outcomes[0].robust_accuracy,
        "verified": verified,
        "train_time_s": sum(s.time_s for s in result.history),
        "pgd_time_s": time.perf_counter() - t0,
        "curve": curve,
    }


def first_epoch_reaching(curve: list[dict], target: float) -> int | None:
    """None when the target is 0 (every epoch trivially reaches it) or is never reached."""
    if target <= 0:
        return None
    return next((c["epoch"] for c in curve if c["verified"] >= target), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="mnist-cnn-bn")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: 10, or what fits --budget-s)")
    p.add_argument("--budget-s", type=float, default=None, help="training seconds per run; sets the epochs")
    p.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.3])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=["vanilla", "short"], choices=list(VARIANTS),
                   help="vanilla is always run first (it sets the target)")
    p.add_argument("--n-train", type=int, default=None, help="smoke tests only: fewer training points")
    p.add_argument("--n-test", type=int, default=None, help="final evaluation on the first n test points (default all)")
    p.add_argument("--curve-n", type=int, default=1000, help="test points of the per-epoch curve")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train_all, test_all = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    train, test = train_all.head(args.n_train), test_all.head(args.n_test)
    print(
        f"data: {train.name} {len(train)} of {len(train_all)} train / {test.name} {len(test)} of {len(test_all)} test, "
        f"{args.arch}, batch {args.batch_size}"
    )
    rows = []
    for eps in args.eps:
        if args.epochs is not None:
            epochs = args.epochs
        elif args.budget_s is not None:
            epochs, per_step = calibrate_epochs(eps, args, train)
            print(f"eps {eps:g}: {per_step * 1e3:.0f} ms per training step -> {epochs} epochs in {args.budget_s:g}s per run")
        else:
            epochs = 10
        names = ["vanilla"] + [v for v in args.variants if v != "vanilla"]
        runs = {r: run(r, eps, epochs, args, train, test) for r in names}
        target = runs["vanilla"]["verified"]
        for r in runs.values():
            r["target_vanilla_final_verified"] = target
            r["first_epoch_reaching_target"] = first_epoch_reaching(r["curve"], target)
            rows.append(r)
    print()
    print(f"test: {test.name}, n={len(test)}")
    print("| eps | recipe | epochs | clean err | PGD-40 err | IBP-verified err | train time | first epoch >= vanilla final verified |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        reach = r["first_epoch_reaching_target"]
        target0 = r["target_vanilla_final_verified"] <= 0
        print(
            f"| {r['eps']:g} | {r['recipe']} (start {r['config']['start']}, ramp {r['config']['warmup']}) | {r['epochs']} "
            f"| {100 * (1 - r['clean']):.2f}% | {100 * (1 - r['pgd']):.2f}% | {100 * (1 - r['verified']):.2f}% "
            f"| {r['train_time_s']:.0f}s | "
            + (f"{reach} of {r['epochs']}" if reach is not None else "n/a (target 0%)" if target0 else "never")
            + " |"
        )
    for eps in args.eps:
        for line in PUBLISHED.get(round(eps, 6), []):
            print(f"published, MNIST eps {eps:g} (official 10,000 test images, full training set): {line}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": args.arch, "data": [train.name, len(train), test.name, len(test)], "runs": rows}, f, indent=2)


if __name__ == "__main__":
    main()
