"""`robust eval CONFIG.yaml`: scripted robustness checks with gates, for CI."""

from __future__ import annotations


import click
from rich.markup import escape

from robustcli.checks import EvalContext
from robustcli.errors import CheckFailed, InputError, first_line
from robustcli.evalconfig import EvalConfig, load_eval_config
from robustcli.evalreport import gate_counts, junit_xml, markdown, write_text
from robustcli.gates import evaluate_gate
from robustcli.github import append_step_summary, error_annotations, on_github_actions
from robustcli.html_report import check_output, html_option, write_eval_output
from robustcli.options import RobustCommand, json_option
from robustcli.progress import progress_bar
from robustcli.core.nn import model_float_dtype
from robustcli.report import dtype_name, print_table, write_json
from robustcli.data import DataFormat
from robustcli.session import open_workload


def run_config(config: EvalConfig, show_progress: bool = True, samples: dict | None = None) -> dict:
    """Run every check of a validated config and evaluate its gates; returns the report dict.

    Given a dict `samples`, attack checks keep adversarial examples and it receives, per check
    name, a sample of broken points (`robustcli.image_grid.BrokenSample`, or None) for `--html`."""
    try:
        w = open_workload(
            config.model, config.data, arch=config.arch, mean=config.mean, std=config.std,
            allow_pickle=config.allow_pickle, device=config.device, n=config.n,
            fmt=DataFormat(pixel_scale=config.pixel_scale, classes=config.classes),
        )  # fmt: skip
    except InputError as e:
        raise InputError(f"{config.path}:{config.model_line}: {e}") from None

    def progress(description: str, total: int):
        return progress_bar(description, total, enabled=show_progress)

    ctx = EvalContext(w, config.seed, config.batch_size, progress, keep_samples=samples is not None)
    checks = []
    clean = None
    for check in config.checks:
        wanted = {g.metric for g in check.gates}
        try:
            outcome = check.check_type.run(ctx, check.options, wanted)
        except InputError as e:  # e.g. a layer the bound method cannot handle: a config problem
            raise InputError(f"{config.path}:{check.line}: check {check.name!r}: {e}") from None
        except BaseException as e:  # noqa: BLE001 - model code may raise anything, sys.exit(0) included
            # A check that did not finish measured nothing, so no gate of it may pass: an error.
            raise InputError(
                f"{config.path}:{check.line}: check {check.name!r} did not finish: "
                f"{type(e).__name__}: {first_line(e) if str(e) else 'no message'}"
            ) from None
        results = [evaluate_gate(check.name, g, outcome) for g in check.gates]
        if len(results) != len(check.gates) or any(r.passed is not True and r.passed is not False for r in results):
            raise InputError(f"{config.path}:{check.line}: check {check.name!r}: a gate was not evaluated")
        clean = outcome.values.get(("clean_accuracy", None, None), clean)
        if samples is not None and check.type in ("attack", "strong"):
            samples[check.name] = outcome.sample
        checks.append(
            {
                "name": check.name,
                "type": check.type,
                "options": check.options,
                "time_s": outcome.time_s,
                "passed": all(r.passed for r in results),
                "gates": [r.summary() for r in results],
                "details": outcome.details,
            }
        )
    if len(checks) != len(config.checks):
        raise InputError(f"{config.path}: only {len(checks)} of {len(config.checks)} checks ran")
    total = len([g for c in checks for g in c["gates"]])
    failed = sum(not g["passed"] for c in checks for g in c["gates"])
    return {
        "command": "eval",
        "name": config.name,
        "config": str(config.path),
        "model": w.model.name,
        "model_dtype": dtype_name(model_float_dtype(w.model.module)),
        "data": w.data.name,
        **({"data_format": w.data.provenance} if w.data.provenance else {}),
        "n": len(w.data),
        "seed": config.seed,
        "device": str(w.device),
        "clean_accuracy": clean,
        "passed": failed == 0,
        "gates_total": total,
        "gates_failed": failed,
        "checks": checks,
    }


@click.command("eval", cls=RobustCommand)
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@json_option
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), help="Write JUnit XML here (one test case per gate).")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), help="Write a Markdown summary here (for a PR comment).")
@html_option
def command(config_path, json_path, junit_path, markdown_path, html_path) -> None:
    """Run the checks of a YAML config and test their gates; exit 1 if any gate fails.

    \b
    robust eval configs/ci-example.yaml --json report.json --junit report.xml --markdown report.md

    Exit codes: 0 every gate holds, 1 a gate failed, 2 a bad config (the message names the line).
    """
    check_output(json_path, "--json", (".json",))
    check_output(junit_path, "--junit", (".xml",))
    check_output(markdown_path, "--markdown", (".md", ".markdown"))
    check_output(html_path, "--html", (".html", ".htm"))
    config = load_eval_config(config_path)
    samples: dict | None = {} if html_path else None
    report = run_config(config, samples=samples)
    rows = [
        [escape(c["name"]), c["type"], escape(g["gate"]), "-" if g["value"] is None else f"{g['value']:.4g}", "[green]pass" if g["passed"] else "[red]FAIL"]
        for c in report["checks"]
        for g in c["gates"]
    ]
    total, failed = gate_counts(report)
    print_table(
        f"robust eval {report['name']}: {report['model']} on {report['data']} (n={report['n']}, seed {report['seed']})",
        ["check", "type", "gate", "measured", "result"],
        rows,
        caption=f"{total - failed} of {total} gates passed",
    )
    if json_path:
        write_json(json_path, report)
    if junit_path:
        write_text(junit_path, junit_xml(report))
    if markdown_path:
        write_text(markdown_path, markdown(report))
    if html_path:
        write_eval_output(report, samples or {}, html_path)
    if on_github_actions():
        append_step_summary(markdown(report))
        for line in error_annotations(report):
            click.echo(line)
    if failed:
        names = "; ".join(f"{c['name']}: {g['gate']} ({g['message']})" for c in report["checks"] for g in c["gates"] if not g["passed"])
        raise CheckFailed(f"{failed} of {total} gates failed: {names}")
