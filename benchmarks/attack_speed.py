"""Attack speed: ours vs torchattacks vs foolbox on the same model and data, in one run.

    python benchmarks/attack_speed.py [--model mnist-cnn] [--n 1000] [--batch-size 100] [--eps 0.1]

Prints images/s for PGD-20 Linf (robust-accuracy evaluation) and CW-L2, the ratios against the
peers, our per-step cost divided by one forward+backward pass, and the peak memory of
`robust attack` on mnist (a separate process, max RSS). Robust accuracies are printed beside the
speeds: a faster attack that reports higher robust accuracy than the peers would be a bug.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

import torch

from robustcli.attacks import CarliniWagnerL2, PGDLinf
from robustcli.attacks.base import input_gradient
from robustcli.attacks.evaluate import evaluate
from robustcli.attacks.losses import cross_entropy
from robustcli.data import load_dataset
from robustcli.models import load_model


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def batches(x, y, bs):
    for i in range(0, len(y), bs):
        yield x[i : i + bs], y[i : i + bs]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mnist-cnn")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--cw-n", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cw-steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import foolbox as fb
    import torchattacks

    torch.manual_seed(0)
    model = load_model(args.model, progress=False).module.eval()
    data = load_dataset("mnist").head(args.n)
    x, y = data.x, data.y
    eps, steps, bs = args.eps, args.steps, args.batch_size
    alpha = 2.5 * eps / steps
    cpu = torch.device("cpu")
    print(f"model {args.model}, {len(y)} mnist test points, batch {bs}, PGD-{steps} Linf eps {eps}, threads {torch.get_num_threads()}")

    # PGD robust-accuracy evaluation.
    ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)

    def run_ours():
        return evaluate(model, x, y, [(PGDLinf(steps=steps), [eps])], device=cpu, batch_size=bs)

    def run_ta():
        robust = []
        for xb, yb in batches(x, y, bs):
            adv = ta(xb, yb)
            with torch.no_grad():
                robust.append(model(adv).argmax(1) == yb)
        return torch.cat(robust)

    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    fb_pgd = fb.attacks.LinfPGD(steps=steps, rel_stepsize=2.5 / steps)

    def run_fb():
        return torch.cat([~fb_pgd(fmodel, xb, fb.criteria.Misclassification(yb), epsilons=eps)[2] for xb, yb in batches(x, y, bs)])

    # One untimed warm-up each, then interleaved repeats with the median time: the first library
    # to run otherwise pays the allocator and kernel warm-up, and load from other processes
    # drifts over a run.
    runners = {"ours": run_ours, "torchattacks": run_ta, "foolbox": run_fb}
    for run in runners.values():
        run()
    times: dict[str, list[float]] = {k: [] for k in runners}
    results = {}
    for _ in range(args.repeats):
        for name, run in runners.items():
            results[name], t = timed(run)
            times[name].append(t)
    t_ours, t_ta, t_fb = (statistics.median(times[k]) for k in runners)
    ours, ta_robust, fb_robust = results["ours"], results["torchattacks"], results["foolbox"]
    n = len(y)
    print("\nPGD-%d Linf evaluation" % steps)
    print(f"  {'library':<12}{'images/s':>10}{'robust acc':>12}")
    for name, t, acc in (
        ("ours", t_ours, ours.outcomes[0].robust_accuracy),
        ("torchattacks", t_ta, ta_robust.float().mean().item()),
        ("foolbox", t_fb, fb_robust.float().mean().item()),
    ):
        print(f"  {name:<12}{n / t:>10.0f}{100 * acc:>11.1f}%")
    print(f"  (median of {args.repeats} interleaved runs after a warm-up; robust acc of the last run)")
    print(f"  ratio ours/torchattacks {t_ta / t_ours:.2f}x, ours/foolbox {t_fb / t_ours:.2f}x")

    # Per-step cost against the floor: one forward + backward w.r.t. the input, all points active
    # (a tiny eps so that no point is broken and early stopping saves nothing).
    xb, yb = x[:bs], y[:bs]
    reps = 20
    pgd = PGDLinf(steps=reps, random_start=False)
    floors, stepped = [], []
    for _ in range(5):  # interleaved repeats, minimum of each: robust to load from other processes
        floors.append(timed(lambda: [input_gradient(model, xb, lambda z: cross_entropy(z, yb)) for _ in range(reps)])[1])
        stepped.append(timed(lambda: pgd(model, xb, yb, 1e-4))[1])
    # PGD-k runs k forward+backward passes plus one final forward.
    print(f"\nper-step cost / forward+backward floor: {min(stepped) / min(floors):.3f}")

    # CW-L2 at equal steps.
    xc, yc = x[: args.cw_n], y[: args.cw_n]
    cw, t_cw = timed(lambda: [CarliniWagnerL2(steps=args.cw_steps)(model, xb, yb) for xb, yb in batches(xc, yc, bs)])
    ta_cw = torchattacks.CW(model, c=1, kappa=0, steps=args.cw_steps, lr=0.01)
    ta_adv, t_ta_cw = timed(lambda: torch.cat([ta_cw(xb, yb) for xb, yb in batches(xc, yc, bs)]))
    fb_cw = fb.attacks.L2CarliniWagnerAttack(steps=args.cw_steps, binary_search_steps=5, initial_const=1e-2)
    fb_out, t_fb_cw = timed(
        lambda: [fb_cw(fmodel, xb, fb.criteria.Misclassification(yb), epsilons=None) for xb, yb in batches(xc, yc, bs)]
    )
    ours_sizes = torch.cat([r.perturbation[r.success] for r in cw])
    with torch.no_grad():
        ta_ok = model(ta_adv).argmax(1) != yc
    ta_sizes = (ta_adv - xc).flatten(1).norm(dim=1)[ta_ok]
    fb_sizes = torch.cat([(o[1] - xb).flatten(1).norm(dim=1)[o[2]] for o, (xb, _) in zip(fb_out, batches(xc, yc, bs))])
    m = len(yc)
    print(f"\nCW-L2, {args.cw_steps} steps ({m} points; ours and foolbox: 5 binary-search steps, torchattacks: c=1, no search)")
    print(f"  {'library':<12}{'images/s':>10}{'success':>9}{'median L2':>11}")
    for name, t, sizes in (("ours", t_cw, ours_sizes), ("torchattacks", t_ta_cw, ta_sizes), ("foolbox", t_fb_cw, fb_sizes)):
        print(f"  {name:<12}{m / t:>10.1f}{100 * len(sizes) / m:>8.0f}%{sizes.median().item():>11.3f}")

    # Peak memory of the CLI on mnist, in a fresh process.
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(
        [sys.executable, "-m", "robustcli", "attack", "--model", "mnist-cnn", "--attack", "fgsm", "pgd", "--eps", "0.1", "0.3"],
        check=True,
        capture_output=True,
    )
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"\npeak memory of `robust attack --model mnist-cnn --attack fgsm pgd` (1,000 points): {max(peak, before) / 1024:.0f} MB")


if __name__ == "__main__":
    main()
