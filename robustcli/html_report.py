"""The HTML report of `attack`, `certify` and `eval` (`--html PATH`), built from the JSON report dict.

Each page has the run's facts (model, data, n, seed, device), the summary table the terminal
shows, accuracy against eps per attack (or verified accuracy per bound method, with PGD's upper
bound dashed), the gradient-masking diagnostics with their advice, and, where adversarial
examples were kept, the grid of `robustcli.image_grid` for a sample of broken points. The page is
built from the same dict `--json` writes, so the two never disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from robustcli.attacks.evaluate import Evaluation
from robustcli.requests import OptionError
from robustcli.image_grid import broken_sample, grid_png, message_png, pgd_broken_sample, write_png
from robustcli.session import Workload
from robustcli.html_page import Page, Section, esc, image, paragraph, table, write_page
from robustcli.report_charts import accuracy_vs_eps_png


def check_output(path: str | None, flag: str, suffixes: tuple[str, ...]) -> None:
    """Before any work: the output names a file of the right kind in an existing folder."""
    if path is None:
        return
    p = Path(path)
    option = flag.removeprefix("--")
    if p.suffix.lower() not in suffixes:
        raise OptionError(option, f"{path}: use a file name ending in {' or '.join(suffixes)}")
    if not p.parent.exists():
        raise OptionError(option, f"{path}: folder {p.parent} does not exist")


def _pct(v: Any) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}%"


def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _meta(report: dict) -> list[tuple[str, Any]]:
    keys = ("model", "arch", "data", "n", "seed", "device", "backend", "suite", "norm", "config")
    return [(k, report[k]) for k in keys if report.get(k) is not None]


def diagnostics_section(checks: list[dict], warnings: list[dict]) -> Section:
    status_css = {"ok": "ok", "warning": "warn", "skipped": "muted"}
    rows = [[c["code"], c["ran_on"], c["result"], (c["status"], status_css.get(c["status"], ""))] for c in checks]
    body = [table(["check", "ran on", "result", "status"], rows)]
    if not warnings:
        body.append(paragraph("No gradient-masking warning.", "ok"))
    for w in warnings:
        body.append(
            '<div class="advice">'
            + f"<p><span class=\"warn\">warning {esc(w['code'])}</span>: {esc(w['message'])}</p>"
            + f"<p><strong>What to do:</strong> {esc(w['advice'])}</p></div>"
        )
    return Section("Gradient-masking diagnostics", body)


def attack_rows(results: list[dict], clean_accuracy: float | None) -> list[list[Any]]:
    return [
        [
            f"{r['attack']}*" if r.get("cumulative") else r["attack"],
            r["norm"],
            f"{r['eps']:g}",
            _pct(clean_accuracy),
            _pct(r["robust_accuracy"]),
            _pct(r["success_rate"]),
            _num(r.get("median_perturbation")),
            f"{r['time_s']:.2f}s",
            "-" if r.get("images_per_s") is None else f"{r['images_per_s']:.0f}",
        ]
        for r in results
    ]


ATTACK_COLUMNS = ["attack", "norm", "eps", "clean acc", "robust acc", "success", "median pert.", "time", "img/s"]


def _attack_sections(results: list[dict], clean: float | None, what: str) -> list[Section]:
    caption = (
        "* strong suite: each attack ran only on the points still unbroken; its robust acc is after it and "
        "the suite attacks above it"
        if any(r.get("cumulative") for r in results)
        else "a point is robust only if correct and every attack failed on it (worst-case rows)"
    )
    out = [Section(f"Robust accuracy{what}", [table(ATTACK_COLUMNS, attack_rows(results, clean), caption)])]
    chart = accuracy_vs_eps_png(results, "attack", "robust_accuracy", ylabel="robust accuracy (%)", title="robust accuracy")
    if chart is not None:
        out.append(Section(f"Robust accuracy against eps{what}", [image(chart, "robust accuracy against eps per attack")]))
    return out


def _certify_sections(results: list[dict], what: str) -> list[Section]:
    rows = [
        [
            r["method"], r["norm"], f"{r['eps']:g}", _pct(r["clean_accuracy"]), _pct(r["verified_accuracy"]),
            _pct(r["pgd_accuracy"]), _pct(r["gap"]), _num(r.get("mean_margin_lower_bound"), 3), f"{r['time_s']:.2f}s",
        ]  # fmt: skip
        for r in results
    ]
    columns = ["method", "norm", "eps", "clean", "verified", "PGD", "gap", "margin LB", "time"]
    caption = "verified <= true robust <= PGD (upper bound); gap = PGD - verified; time = bounding only"
    out = [Section(f"Verified accuracy{what}", [table(columns, rows, caption)])]
    chart = accuracy_vs_eps_png(
        results, "method", "verified_accuracy", ylabel="accuracy (%)", title="verified accuracy",
        extra={"pgd_accuracy": "PGD robust (upper bound)"},
    )  # fmt: skip
    if chart is not None:
        out.append(Section(f"Verified accuracy against eps{what}", [image(chart, "verified accuracy against eps per method")]))
    return out


def _grid_section(grid_png: bytes | None, heading: str = "Broken points") -> Section:
    if grid_png is None:
        return Section(heading, [paragraph("No attack broke any point, so there is nothing to show.", "muted")])
    return Section(
        heading,
        [
            paragraph(
                "A sample of points an attack broke, most fragile first: clean image with the true class and "
                "the model's prediction, the adversarial image with the prediction on it, and the perturbation "
                "amplified so that mid-grey is unchanged (the factor is in the title)."
            ),
            image(grid_png, "clean, adversarial and amplified perturbation images of broken points"),
        ],
    )


def attack_page(report: dict, grid_png: bytes | None) -> Page:
    page = Page(f"robust attack: {report['model']} on {report['data']}", _meta(report))
    page.meta.insert(0, ("clean accuracy", _pct(report.get("clean_accuracy"))))
    page.sections += _attack_sections(report["results"], report.get("clean_accuracy"), "")
    page.sections.append(diagnostics_section(report.get("diagnostics", []), report.get("warnings", [])))
    page.sections.append(_grid_section(grid_png))
    return page


def certify_page(report: dict, grid_png: bytes | None = None) -> Page:
    page = Page(f"robust certify: {report['model']} on {report['data']}", _meta(report))
    page.meta.insert(0, ("clean accuracy", _pct(report.get("clean_accuracy"))))
    pgd = report.get("pgd") or {}
    if pgd:
        page.meta.append(("PGD cross-check", f"{pgd.get('steps')} steps, {pgd.get('restarts')} restart(s)"))
    page.sections += _certify_sections(report["results"], "")
    page.sections.append(_grid_section(grid_png, "Points PGD broke (not certifiable at that eps)"))
    return page


def eval_page(report: dict, grids: dict[str, bytes | None] | None = None) -> Page:
    total = sum(len(c["gates"]) for c in report["checks"])
    failed = sum(not g["passed"] for c in report["checks"] for g in c["gates"])
    banner = (f"all {total} gates passed", True) if failed == 0 else (f"{failed} of {total} gates failed", False)
    page = Page(f"robust eval {report['name']}: {report['model']} on {report['data']}", _meta(report), banner)
    page.meta.insert(0, ("clean accuracy", _pct(report.get("clean_accuracy"))))
    gate_rows = [
        [c["name"], c["type"], g["gate"], _num(g["value"]), ("pass", "ok") if g["passed"] else ("FAIL", "bad"), g["message"]]
        for c in report["checks"]
        for g in c["gates"]
    ]
    page.sections.append(Section("Gates", [table(["check", "type", "gate", "measured", "result", "evidence"], gate_rows)]))
    for c in report["checks"]:
        details = c.get("details") or {}
        results = details.get("results") or []
        what = f": check {c['name']} ({c['type']})"
        if results and "attack" in results[0]:
            page.sections += _attack_sections(results, details.get("clean_accuracy"), what)
        elif results and "method" in results[0]:
            page.sections += _certify_sections(results, what)
        if "diagnostics" in details:
            section = diagnostics_section(details["diagnostics"], details.get("warnings", []))
            section.heading += what
            page.sections.append(section)
        if grids and c["name"] in grids:
            page.sections.append(_grid_section(grids[c["name"]], f"Broken points{what}"))
    return page


def training_page(
    title: str,
    meta: list[tuple[str, Any]],
    final: Section,
    curve_png: bytes | None,
    grids: list[tuple[str, bytes | None, str]],
    extra: list[Section] = (),  # type: ignore[assignment]
) -> Page:
    """The trainers' page: the final evaluation table, the training curve, anything the trainer adds
    (e.g. distillation's diagnostics), and per (heading, grid, which points were searched) the
    broken points of the final evaluation's attacks."""
    page = Page(title, meta)
    page.sections.append(final)
    if curve_png is None:
        page.sections.append(Section("Training curve", [paragraph("No epoch was logged in this run.", "muted")]))
    else:
        page.sections.append(
            Section("Training curve", [image(curve_png, "training loss and accuracy per epoch")])
        )
    page.sections += list(extra)
    for heading, grid, searched in grids:
        section = _grid_section(grid, heading)
        if grid is None:
            section.body = [paragraph(f"No attack broke any of {searched}, so there is nothing to show.", "muted")]
        else:
            section.body.insert(1, paragraph(f"Drawn from {searched}.", "muted"))
        page.sections.append(section)
    return page


def write_html(path: str | Path, page: Page) -> None:
    """Atomically; under torchrun the caller is rank 0 (the only rank holding the report)."""
    write_page(path, page)


html_option = click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False),
    help="Write a self-contained HTML report here (tables, charts, diagnostics, images; opens offline).",
)


def write_attack_outputs(
    report: dict, evaluation: Evaluation, workload: Workload, html_path: str | None, png_path: str | None
) -> None:
    """`attack --html/--png`: the image grid of broken points (needs `keep_adversarials=True`) and the page."""
    sample = broken_sample(evaluation, workload.model.module, workload.data.x, workload.data.y, device=workload.device)
    grid = None if sample is None else grid_png(sample, title=f"{report['model']} on {report['data']}: broken points")
    if png_path:
        write_png(png_path, grid if grid is not None else message_png("No attack broke any point: nothing to show."))
    if html_path:
        write_html(html_path, attack_page(report, grid))


def write_certify_output(report: dict, outcomes: list, workload: Workload, html_path: str, *, steps: int) -> None:
    """`certify --html`: the page, with images of a few points PGD broke (PGD re-run on them only)."""
    sample = pgd_broken_sample(
        outcomes, workload.model.module, workload.data.x, workload.data.y,
        norm=report["norm"], steps=steps, seed=report["seed"], device=workload.device,
    )  # fmt: skip
    grid = None if sample is None else grid_png(sample, title=f"{report['model']} on {report['data']}: points PGD broke")
    write_html(html_path, certify_page(report, grid))


def write_eval_output(report: dict, samples: dict, html_path: str) -> None:
    """`eval --html`: the gates, each check's tables and charts, and the broken points of attack checks."""
    grids = {
        name: None if sample is None else grid_png(sample, title=f"check {name}: broken points")
        for name, sample in samples.items()
    }
    write_html(html_path, eval_page(report, grids))
