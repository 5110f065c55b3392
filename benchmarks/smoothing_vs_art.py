"""Randomized smoothing CERTIFY: robustcli vs IBM ART 1.20 on the same model, data, sigma, n, n0, alpha.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/smoothing_vs_art.py --model mnist-cnn --points 20 --samples 1000

Both implement Cohen et al. 2019's CERTIFY (ART: `PyTorchRandomizedSmoothing.certify`, with
`sample_size` = n0). Prints what it measured:
- the Clopper-Pearson lower bound of both on every count k = 0..n (exact agreement expected);
- per point, the predicted class (or abstain) and radius of both runs. They draw independent noise,
  so radii differ by Monte Carlo error; a point counts as disagreeing when the radii differ by more
  than 5 standard errors of the difference (delta method on the binomial count), or when one
  certifies a class the other does not and neither is near the abstention threshold;
- certify throughput (points per second) of each and the ratio, from --repeats interleaved timed
  runs after a warm-up (median), both on the CPU with the same batch size and thread count.
Needs `adversarial-robustness-toolbox==1.20.*` and statsmodels (ART's bound). Not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import numpy as np
import torch
from scipy.stats import norm

from robustcli.certify.smoothing import ABSTAIN, certify_smoothed, clopper_pearson_lower
from robustcli.session import open_workload


def art_smoother(model, input_shape, classes: int, n0: int, sigma: float, alpha: float):
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    return PyTorchRandomizedSmoothing(
        model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(input_shape), nb_classes=classes,
        sample_size=n0, scale=sigma, alpha=alpha, device_type="cpu",
    )  # fmt: skip


def radius_standard_error(radius: np.ndarray, sigma: float, n: int) -> np.ndarray:
    """Standard error of sigma * Phi^-1(p_hat) at p = Phi(radius / sigma): sigma * sd(p_hat) / phi(z)."""
    z = radius / sigma
    p = norm.cdf(z)
    return sigma * np.sqrt(p * (1 - p) / n) / np.maximum(norm.pdf(z), 1e-12)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mnist-cnn")
    p.add_argument("--data", default=None)
    p.add_argument("--points", type=int, default=20)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--samples", type=int, default=1000, help="n (Cohen et al.: 100000)")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--art-batch-size", type=int, default=None, help="ART's batch (default: --batch-size; ART's own default is 32)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    import art

    w = open_workload(args.model, args.data, n=args.points, device="cpu")
    model = w.model.module.eval()
    x, y = w.data.x, w.data.y
    n, sigma, alpha = args.samples, args.sigma, args.alpha
    art_batch = args.art_batch_size or args.batch_size
    print(f"model {args.model} on {w.data.name}: {len(x)} points, sigma {sigma}, n {n}, n0 {args.n0}, "
          f"alpha {alpha}, batch {args.batch_size} (ART {art_batch}), torch threads {torch.get_num_threads()}, ART {art.__version__}")  # fmt: skip

    # 1. The bound itself, on every possible count.
    smoother = art_smoother(model, x.shape[1:], w.num_classes, args.n0, sigma, alpha)
    k = torch.arange(n + 1)
    ours_lb = clopper_pearson_lower(k, n, alpha).numpy()
    art_lb = np.array([smoother._lower_confidence_bound(int(i), n) for i in k])
    bound_diff = float(np.abs(ours_lb - art_lb).max())
    print(f"Clopper-Pearson lower bound, k = 0..{n}: max |ours - ART| = {bound_diff:.2e}")

    # 2. Certify both, timed, interleaved.
    def run_ours(rep: int):
        g = torch.Generator().manual_seed(args.seed + rep)
        c = certify_smoothed(model, x, sigma, n=n, n0=args.n0, alpha=alpha, num_classes=w.num_classes,
                             generator=g, batch_size=args.batch_size)  # fmt: skip
        return c.prediction.numpy(), c.radius.numpy()

    def run_art(rep: int):
        np.random.seed(args.seed + rep)
        pred, radius = smoother.certify(x.numpy(), n=n, batch_size=art_batch)
        return pred.astype(np.int64), radius.astype(np.float64)

    small = slice(0, min(2, len(x)))
    certify_smoothed(model, x[small], sigma, n=args.n0, n0=args.n0, alpha=alpha, num_classes=w.num_classes,
                     generator=torch.Generator().manual_seed(0), batch_size=args.batch_size)  # warm-up  # fmt: skip
    smoother.certify(x[small].numpy(), n=args.n0, batch_size=art_batch)
    times: dict[str, list[float]] = {"robustcli": [], "art": []}
    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for rep in range(args.repeats):
        for name, fn in (("robustcli", run_ours), ("art", run_art)):
            t0 = time.perf_counter()
            results[name] = fn(rep)
            times[name].append(time.perf_counter() - t0)
    ours_pred, ours_r = results["robustcli"]
    art_pred, art_r = results["art"]

    same_class = ours_pred == art_pred
    both = (ours_pred != ABSTAIN) & (art_pred != ABSTAIN) & same_class
    se = np.sqrt(radius_standard_error(ours_r, sigma, n) ** 2 + radius_standard_error(art_r, sigma, n) ** 2)
    z = np.abs(ours_r - art_r) / np.maximum(se, 1e-12)
    # A class/abstain mismatch is Monte Carlo error when the certifying side is near the threshold
    # (radius within 5 standard errors of 0).
    mismatch_real = (~same_class) & (np.maximum(ours_r, art_r) > 5 * np.maximum(se, 1e-12))
    radius_real = both & (z > 5)
    t_ours, t_art = statistics.median(times["robustcli"]), statistics.median(times["art"])
    labels = y.numpy()
    summary = {
        "points": len(x), "sigma": sigma, "samples": n, "n0": args.n0, "alpha": alpha, "batch_size": args.batch_size, "art_batch_size": art_batch,
        "threads": torch.get_num_threads(), "bound_max_abs_diff": bound_diff,
        "same_prediction": float(same_class.mean()), "mismatches_beyond_mc": int(mismatch_real.sum()),
        "radius_mean_abs_diff": float(np.abs(ours_r - art_r)[both].mean()) if both.any() else None,
        "radius_max_z": float(z[both].max()) if both.any() else None, "radius_beyond_5se": int(radius_real.sum()),
        "certified_accuracy_r0": {"robustcli": float((ours_pred == labels).mean()), "art": float((art_pred == labels).mean())},
        "mean_radius": {"robustcli": float(ours_r.mean()), "art": float(art_r.mean())},
        "time_s": {"robustcli": t_ours, "art": t_art},
        "points_per_s": {"robustcli": len(x) / t_ours, "art": len(x) / t_art},
        "speedup_vs_art": t_art / t_ours,
    }  # fmt: skip
    print(f"same prediction (class or abstain): {100 * summary['same_prediction']:.1f}% of points; "
          f"mismatches beyond Monte Carlo error: {summary['mismatches_beyond_mc']}")  # fmt: skip
    if both.any():
        print(f"radius, points both certify with the same class ({int(both.sum())}): mean |diff| "
              f"{summary['radius_mean_abs_diff']:.4f}, max |diff| / SE {summary['radius_max_z']:.2f}, "
              f"beyond 5 SE: {summary['radius_beyond_5se']}")  # fmt: skip
    print(f"certified accuracy at r=0: robustcli {summary['certified_accuracy_r0']['robustcli']:.3f}, "
          f"ART {summary['certified_accuracy_r0']['art']:.3f}; mean radius robustcli "
          f"{summary['mean_radius']['robustcli']:.4f}, ART {summary['mean_radius']['art']:.4f}")  # fmt: skip
    print(f"certify time (median of {args.repeats}): robustcli {t_ours:.2f}s ({len(x) / t_ours:.2f} points/s), "
          f"ART {t_art:.2f}s ({len(x) / t_art:.2f} points/s); robustcli is {t_art / t_ours:.2f}x ART")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
