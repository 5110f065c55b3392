"""The tables commands and checks print: attack results, gradient-masking diagnostics, certificates."""

from __future__ import annotations

from robustcli.attacks.diagnostics import Diagnostics
from robustcli.report import pct, print_table, stdout


def attack_table(report: dict, clean_accuracy: float) -> None:
    """One row per (attack, eps); `budget` says where the row's eps came from (a flag or the default)."""
    rows = [
        [
            f"{r['attack']}*" if r.get("cumulative") else r["attack"],
            r["norm"],
            f"{r['eps']:g}",
            r.get("eps_source", "-"),
            pct(clean_accuracy),
            pct(r["robust_accuracy"]),
            pct(r["success_rate"]),
            r["median_perturbation"],
            f"{r['time_s']:.2f}s",
            f"{r['images_per_s']:.0f}",
        ]
        for r in report["results"]
    ]
    columns = ["attack", "norm", "eps", "budget", "clean acc", "robust acc", "success", "median pert.", "time", "img/s"]
    notes = []
    if any(r.get("cumulative") for r in report["results"]):
        notes.append(
            "* strong suite: each attack ran only on the points still unbroken; its robust acc is after it "
            "and the suite attacks above it, its success rate is over the points it ran on"
        )
    if any(r.get("eps_source") == "default" for r in report["results"]):
        notes.append("budget 'default': no flag set this norm's eps (--eps for Linf, --eps-l2 for L2)")
    print_table(
        f"Robustness of {report['model']} on {report['data']} (n={report['n']})", columns, rows, "\n".join(notes) or None
    )


def diagnostics_table(diag: Diagnostics) -> None:
    rows = [[c.code, c.ran_on, c.result, c.status] for c in diag.checks]
    print_table("Gradient-masking diagnostics", ["check", "ran on", "result", "status"], rows)
    for w in diag.warnings:
        stdout.print(f"[bold yellow]warning[/] {w.code}: {w.message}\n  what to do: {w.advice}")


def certify_table(report: dict) -> None:
    rows = [
        [
            r["method"],
            r["norm"],
            f"{r['eps']:g}",
            pct(r["clean_accuracy"]),
            pct(r["verified_accuracy"]),
            pct(r["pgd_accuracy"]),
            pct(r["gap"]),
            f"{r['mean_margin_lower_bound']:.3g}",
            f"{r['time_s']:.2f}s",
        ]
        for r in report["results"]
    ]
    columns = ["method", "norm", "eps", "clean", "verified", "PGD", "gap", "margin LB", "time"]
    print_table(
        f"Certified robustness of {report['model']} on {report['data']} (n={report['n']})",
        columns,
        rows,
        caption="accuracies; verified <= true robust <= PGD (upper bound); gap = PGD - verified; "
        "margin LB = mean worst-margin lower bound; time = bounding only",
    )
