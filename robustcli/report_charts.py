"""Charts for reports: an accuracy-against-budget curve per attack or bound method, as PNG bytes.

One panel per norm, because Linf and L2 budgets are on different scales and one x axis would
mislead. Points are joined in eps order; a series with one budget is drawn as a marker only.
"""

from __future__ import annotations

import io
from collections import defaultdict


def accuracy_vs_eps_png(
    rows: list[dict], series_key: str, value_key: str, *, ylabel: str, title: str, extra: dict[str, str] | None = None
) -> bytes | None:
    """rows: report rows with `norm`, `eps`, `series_key` (attack or method) and `value_key` in [0, 1].

    `extra` maps another value key to its legend name (e.g. {"pgd_accuracy": "PGD (upper bound)"}),
    drawn dashed once per norm. Returns None when no row has a value."""
    by_norm: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        v = r.get(value_key)
        if v is None or v != v:
            continue
        by_norm[r["norm"]][str(r[series_key])].append((float(r["eps"]), float(v)))
        for key, label in (extra or {}).items():
            e = r.get(key)
            if e is not None and e == e:
                by_norm[r["norm"]][label].append((float(r["eps"]), float(e)))
    if not by_norm:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(by_norm), figsize=(5.2 * len(by_norm), 3.6), squeeze=False)
    for ax, (norm, series) in zip(axes[0], sorted(by_norm.items())):
        for name, points in series.items():
            points = sorted(set(points))
            xs, ys = [p[0] for p in points], [100 * p[1] for p in points]
            dashed = name in (extra or {}).values()
            ax.plot(xs, ys, "--" if dashed else "-", marker="o", ms=4, label=name, lw=1.2 if dashed else 1.8)
        ax.set_xlabel(f"eps ({norm})")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{title} ({norm})", fontsize=10)
    return _png(fig)


ACCURACY_KEYS = ("adv_acc", "train_accuracy", "holdout_accuracy", "holdout_verified")
ACCURACY_LABELS = {
    "adv_acc": "adversarial acc (training batches)",
    "train_accuracy": "train acc",
    "holdout_accuracy": "held-out clean acc",
    "holdout_verified": "held-out IBP-verified acc",
}


def training_curve_png(histories: dict[str, list[dict]], *, title: str) -> bytes | None:
    """Per-epoch training loss (left) and the accuracies the trainer logged (right), one line per
    model and quantity; `histories` maps a model's name to the per-epoch records its trainer
    returned (`epoch` is 0-based; drawn 1-based). Returns None when no record has a loss."""
    series = {name: [r for r in records if _finite(r.get("loss"))] for name, records in histories.items()}
    series = {name: records for name, records in series.items() if records}
    if not series:
        return None
    accuracies = [k for k in ACCURACY_KEYS if any(_finite(r.get(k)) for records in series.values() for r in records)]
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    panels = 2 if accuracies else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.6), squeeze=False)
    loss_ax = axes[0][0]
    for name, records in series.items():
        loss_ax.plot([r["epoch"] + 1 for r in records], [r["loss"] for r in records], marker="o", ms=4, label=name)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss")
    loss_ax.set_title(f"{title}: loss", fontsize=10)
    if accuracies:
        acc_ax = axes[0][1]
        for name, records in series.items():
            for key in accuracies:
                points = [(r["epoch"] + 1, 100 * r[key]) for r in records if _finite(r.get(key))]
                if points:
                    label = ACCURACY_LABELS[key] if len(series) == 1 else f"{name}: {ACCURACY_LABELS[key]}"
                    acc_ax.plot(*zip(*points), marker="o", ms=4, label=label)
        acc_ax.set_xlabel("epoch")
        acc_ax.set_ylabel("accuracy (%)")
        acc_ax.set_ylim(-2, 102)
        acc_ax.set_title(f"{title}: accuracy", fontsize=10)
    from matplotlib.ticker import MaxNLocator

    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _png(fig)


def _png(fig) -> bytes:
    """The figure as PNG bytes (laid out, 100 dpi); the figure is closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and v == v and abs(v) != float("inf")
