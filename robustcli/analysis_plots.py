"""PNG figures for `robust analyze`: matplotlib with the Agg backend, written atomically."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from robustcli.core.files import atomic_path


def _figure(ncols: int, width: float = 5.2, height: float = 4.2):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return plt, fig, axes[0]


def _save(plt, fig, path: str | Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def scaling_png(path: str | Path, report: dict) -> None:
    """Left: measured error vs eps (log-log) per curve with its fit and the first-order prediction.
    Right: histogram of normalised logit gaps, the quantity whose CDF is the first-order curve."""
    plt, fig, (ax, hx) = _figure(2)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    predicted_norms = set()
    for i, c in enumerate(report["curves"]):
        col = colors[i % len(colors)]
        eps = np.array(c["eps"])
        err = np.array(c["error"], dtype=float)
        used = np.array(c["in_fit"], dtype=bool)
        pos = err > 0
        ax.plot(eps[pos], err[pos], "o-", color=col, alpha=0.5, ms=4, label=f"{c['attack']} ({c['norm']}) measured")
        ax.plot(eps[pos & used], err[pos & used], "o", color=col, ms=7, mfc="none", mew=1.5)
        fit = c["fit"]
        if fit is not None:
            lo, hi = fit["eps_range"]
            xs = np.geomspace(lo, hi, 50)
            ax.plot(xs, fit["amplitude"] * xs ** fit["gamma"], "-", color=col, lw=2.5,
                    label=f"fit: gamma={fit['gamma']:.2f}, R2={fit['r2']:.3f}")  # fmt: skip
        if c["norm"] not in predicted_norms:
            predicted_norms.add(c["norm"])
            fo = np.array(c["first_order_error"], dtype=float)
            ok = fo > 0
            ax.plot(eps[ok], fo[ok], "k--", lw=1.2, label=f"first order P(gap/||grad gap||{'1' if c['norm'] == 'linf' else '2'} < eps)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eps")
    ax.set_ylabel("adversarial error (among correctly classified)")
    ax.set_title(f"{report['model']} on {report['data']}: error vs eps")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    for norm, values in report["normalised_gaps"].items():
        v = np.array([x for x in values if x is not None and math.isfinite(x) and x > 0])
        if len(v):
            hx.hist(v, bins=np.geomspace(v.min(), v.max(), 30), alpha=0.6, label=f"{norm} attacks")
    hx.set_xscale("log")
    hx.set_xlabel("gap / ||grad_x gap|| (dual norm)")
    hx.set_ylabel("points")
    hx.set_title("normalised logit gaps")
    hx.legend(fontsize=8)
    _save(plt, fig, path)


def tilting_png(path: str | Path, report: dict) -> None:
    """Sweep: angle, strength and accuracy against weight decay. Local mode: histogram of angles."""
    if report["mode"] == "local":
        plt, fig, (ax,) = _figure(1)
        ax.hist(report["angles_deg"], bins=30, color="tab:blue", alpha=0.8)
        ax.set_xlabel("deviation angle of the local linear map from nearest centroid (deg)")
        ax.set_ylabel("points")
        ax.set_title(f"{report['model']}: classes {report['classes'][0]} vs {report['classes'][1]}")
        _save(plt, fig, path)
        return
    plt, fig, (a1, a2, a3) = _figure(3, width=4.4)
    rows = [r for r in report["rows"] if r["weight_decay"] is not None]
    # weight decay 0 cannot sit on a log axis: plot it one decade left of the smallest positive value
    positive = [r["weight_decay"] for r in rows if r["weight_decay"] > 0]
    zero_at = (min(positive) / 10) if positive else 1e-6
    xs = np.array([r["weight_decay"] if r["weight_decay"] > 0 else zero_at for r in rows])
    nc = next(r for r in report["rows"] if r["weight_decay"] is None)
    series = [
        (a1, "angle_deg", "deviation angle (deg)"),
        (a2, "strength", "adversarial strength S = d_adv(NC) / d_adv(C)"),
        (a3, "test_accuracy", "test accuracy"),
    ]
    for ax, key, label in series:
        ax.plot(xs, [r[key] for r in rows], "o-", label="logistic regression")
        ax.axhline(nc[key], color="k", ls="--", lw=1, label="nearest centroid")
        ax.set_xscale("log")
        ax.set_xlabel("L2 weight decay" + (" (0 plotted at left end)" if any(r["weight_decay"] == 0 for r in rows) else ""))
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    accs = [r["test_accuracy"] for r in rows] + [nc["test_accuracy"]]
    a3.set_ylim(max(0.0, min(accs) - 0.1), 1.005)  # accuracy on an honest scale, not zoomed into noise
    if report["mode"] == "sweep" and "empirical_strength" in rows[0]:
        a2.plot(xs, [r["empirical_strength"] for r in rows], "s:", label="empirical (median test distance ratio)")
        a2.legend(fontsize=8)
    fig.suptitle(f"Boundary tilting on {report['data']}: classes {report['classes'][0]} vs {report['classes'][1]}")
    _save(plt, fig, path)
