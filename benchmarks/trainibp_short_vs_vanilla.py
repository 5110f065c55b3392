"""Short warmup (Shi et al. 2021) vs vanilla IBP training at equal total epochs, on the bundled MNIST.

For each eps: train the same architecture with `--recipe short` (IBP init, BN, warmup
regularisers, ramp over 2/7 of the run) and `--recipe vanilla` (default init, no regularisers,
ramp over half the run), same seed, data, epochs, optimiser and lr decay. After every epoch the
test split's clean and IBP-verified accuracy at eps_max are measured (not counted in the wall time);
at the end PGD-40 accuracy too. Reported per run: clean, PGD and IBP-verified test accuracy, the
training wall time, and the first epoch at which the run's verified accuracy reaches the vanilla
run's final verified accuracy (the paper's claim: the short recipe gets there in at most half
the epochs).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/trainibp_short_vs_vanilla.py \
        --arch mnist-cnn-bn --epochs 10 --eps 0.1 0.3 --json out/trainibp_bench.json

Prints what it measured; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from robustcli.attacks.evaluate import evaluate
from robustcli.attacks.registry import make_attack
from robustcli.certify.training import ibp_verified_accuracy, recipe_config, train_ibp
from robustcli.commands.train_ibp import build_model
from robustcli.data import load_dataset


# "short-plain": the short schedule with vanilla's init and no regularisers (an ablation that
# separates the shorter ramp from IBP init + warmup regularisers).
VARIANTS = {
    "vanilla": ("vanilla", {}),
    "short": ("short", {}),
    "short-plain": ("short", {"init": "default", "regularize": False}),
}


def run(name: str, eps: float, args, train, test) -> dict:
    recipe, overrides = VARIANTS[name]
    config = recipe_config(recipe, eps, args.epochs, batch_size=args.batch_size, seed=args.seed, **overrides)
    model = build_model(args.arch, "mnist", (), (), config.init, args.seed)
    curve: list[dict] = []

    def on_epoch(stats) -> None:
        clean, verified = ibp_verified_accuracy(model, test.x, test.y, eps)
        curve.append({"epoch": stats.epoch + 1, "eps": stats.eps, "loss": stats.loss, "clean": clean, "verified": verified})
        print(
            f"  {name:11s} eps={eps:g} epoch {stats.epoch + 1:2d}/{args.epochs}  train eps={stats.eps:.3f}  "
            f"loss={stats.loss:.3f}  clean={clean:.3f}  verified={verified:.3f}  ({stats.time_s:.1f}s)",
            flush=True,
        )

    result = train_ibp(model, train.x, train.y, config, on_epoch=on_epoch)
    t0 = time.perf_counter()
    ev = evaluate(model, test.x, test.y, [(make_attack("pgd", steps=40), [eps])], device=torch.device("cpu"), seed=0)
    return {
        "recipe": name,
        "eps": eps,
        "config": config.as_dict(),
        "clean": curve[-1]["clean"],
        "pgd": ev.outcomes[0].robust_accuracy,
        "verified": curve[-1]["verified"],
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
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.3])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=["vanilla", "short"], choices=list(VARIANTS),
                   help="vanilla is always run first (it sets the target)")
    p.add_argument("--n-train", type=int, default=None, help="smoke tests only: fewer training points")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train, test = load_dataset("mnist", "train").head(args.n_train), load_dataset("mnist", "test")
    print(f"mnist {len(train)} train / {len(test)} test, {args.arch}, {args.epochs} epochs, batch {args.batch_size}")
    rows = []
    for eps in args.eps:
        names = ["vanilla"] + [v for v in args.variants if v != "vanilla"]
        runs = {r: run(r, eps, args, train, test) for r in names}
        target = runs["vanilla"]["verified"]
        for r in runs.values():
            r["target_vanilla_final_verified"] = target
            r["first_epoch_reaching_target"] = first_epoch_reaching(r["curve"], target)
            rows.append(r)
    print()
    print("| eps | recipe | clean | PGD-40 | IBP-verified | train time | first epoch >= vanilla final verified |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        reach = r["first_epoch_reaching_target"]
        target0 = r["target_vanilla_final_verified"] <= 0
        print(
            f"| {r['eps']:g} | {r['recipe']} (start {r['config']['start']}, ramp {r['config']['warmup']}) "
            f"| {100 * r['clean']:.1f}% | {100 * r['pgd']:.1f}% | {100 * r['verified']:.1f}% "
            f"| {r['train_time_s']:.0f}s | "
            + (f"{reach} of {args.epochs}" if reach is not None else "n/a (target 0%)" if target0 else "never")
            + " |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": args.arch, "epochs": args.epochs, "runs": rows}, f, indent=2)


if __name__ == "__main__":
    main()
