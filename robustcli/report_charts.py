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
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
