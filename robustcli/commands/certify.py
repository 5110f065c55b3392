"""`robust certify`: verified accuracy per eps and bound method, cross-checked against PGD."""

from __future__ import annotations

import click

from robustcli.certify.graph import model_steps
from robustcli.certify.lirpa import LIRPA_METHODS, auto_lirpa
from robustcli.certify.verify import METHODS, SoundnessError, certify_dataset, merge_shards
from robustcli.core import distributed
from robustcli.commands.attack import check_eps
from robustcli.core.errors import InputError
from robustcli.html_report import check_output, html_option, write_certify_output
from robustcli.options import (
    MultiOption,
    RobustCommand,
    config_option,
    data_options,
    json_option,
    model_options,
    runtime_options,
)
from robustcli.progress import progress_bar
from robustcli.report import base_report, pct, print_table, write_json
from robustcli.session import open_workload
from robustcli.smoothing_report import add_smoothing_options, certify_smoothing_command, reject_smoothing_options

DEFAULT_EPS = {"linf": (0.1,), "l2": (0.5,)}
# A certified point that PGD broke (or that is misclassified) means a bound engine is wrong: a bug,
# reported on one line with its own exit code, never as a user error (2) or a failed check (1).
UNSOUND_EXIT = 3


def check_methods(methods: tuple[str, ...], model) -> None:
    """Fail fast, before any work: a missing optional dependency or a layer IBP cannot bound."""
    for m in methods:
        if m in LIRPA_METHODS:
            auto_lirpa(m)
    if "ibp" in methods:
        model_steps(model, "ibp")


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


@click.command("certify", cls=RobustCommand)
@config_option
@model_options
@data_options
@click.option("--eps", cls=MultiOption, type=float, help="Budgets (default 0.1 for linf, 0.5 for l2).")
@click.option(
    "--method",
    cls=MultiOption,
    type=click.Choice([*METHODS, "bab", "smoothing"]),
    help="Bound methods (default ibp); crown-ibp, crown, alpha-crown and lirpa-ibp need auto_LiRPA. "
    "With --spec: ibp, crown, alpha-crown, bab (default all). smoothing: randomized smoothing (L2, --sigma).",
)
@click.option("--norm", type=click.Choice(["linf", "l2"]), default="linf", show_default=True)
@click.option("--pgd-steps", type=int, default=40, show_default=True, help="PGD steps for the upper bound.")
@click.option("--pgd-restarts", type=int, default=1, show_default=True)
@click.option("--alpha-iterations", type=int, default=20, show_default=True, help="alpha-CROWN optimisation steps.")
@click.option("--spec", type=click.Path(dir_okay=False), help="VNNLIB property: replaces --data and --eps.")
@click.option("--timeout", type=float, default=None, help="With --spec: seconds before answering timeout.")
@click.option("--counterexample", type=click.Path(dir_okay=False), help="With --spec: counterexample file.")
@add_smoothing_options
@runtime_options
@json_option
@html_option
def command(
    model, arch, mean, std, allow_pickle, data, n, eps, method, norm, pgd_steps, pgd_restarts, alpha_iterations,
    spec, timeout, counterexample, device, batch_size, seed, json_path, html_path, **smoothing,
) -> None:  # fmt: skip
    """Prove robustness: verified accuracy per eps and method, with PGD on the same points.

    \b
    robust certify --model mnist-cnn --eps 0.1 --method ibp crown-ibp
    robust certify --model my.pt --data test.npz --eps 0.01 0.02 --method crown --json cert.json
    robust certify --model net.onnx --spec prop.vnnlib --method crown
    robust certify --model mnist-cnn --method smoothing --sigma 0.25 0.5 --samples 10000 --png cert.png

    Exit code 3: a certified point was broken by PGD or misclassified, i.e. a bound is unsound (a bug).
    """
    check_output(html_path, "--html", (".html", ".htm"))
    if "smoothing" in method:
        if html_path:
            raise InputError("--html is not available with --method smoothing; use --json and --png")
        certify_smoothing_command(
            model=model, arch=arch, mean=mean, std=std, allow_pickle=allow_pickle, data=data, n=n, eps=eps,
            methods=tuple(method), spec=spec, device=device, batch_size=batch_size, seed=seed, json_path=json_path,
            **smoothing,
        )
        return
    reject_smoothing_options()
    if spec is not None and html_path:
        raise InputError("--html goes with --data/--eps runs; with --spec use --json for the verdict")
    if spec is not None:
        from robustcli.spec_check import certify_spec

        certify_spec(
            model, arch=arch, mean=mean, std=std, allow_pickle=allow_pickle, data=data, n=n, eps=eps,
            method=method, pgd_steps=pgd_steps, pgd_restarts=pgd_restarts, alpha_iterations=alpha_iterations,
            spec=spec, timeout=timeout, counterexample=counterexample, device=device, seed=seed, json_path=json_path,
        )
        return
    if "bab" in method or timeout is not None or counterexample is not None:
        raise InputError("--method bab, --timeout and --counterexample go with --spec prop.vnnlib")
    methods = tuple(dict.fromkeys(method or ("ibp",)))
    eps = tuple(eps) or DEFAULT_EPS[norm]
    check_eps(eps, norm)
    for flag, v in (("--pgd-steps", pgd_steps), ("--pgd-restarts", pgd_restarts), ("--batch-size", batch_size)):
        if v < 1:
            raise InputError(f"{flag} must be >= 1, got {v}")
    if alpha_iterations < 1:
        raise InputError(f"--alpha-iterations must be >= 1, got {alpha_iterations}")
    with distributed.main_first():  # rank 0 fills the model/data cache before the other ranks read it
        w = open_workload(model, data, arch=arch, mean=mean, std=std, allow_pickle=allow_pickle, device=device, n=n)
    check_methods(methods, w.model.module)
    part = distributed.shard(len(w.data), batch_size)  # all points in one process; whole batches per rank
    total = (part.stop - part.start) * len(eps) * (len(methods) + 1)
    try:
        with progress_bar("certifying", total) as advance:
            local = _certify(w, part, eps, methods, norm, batch_size, seed, pgd_steps, pgd_restarts,
                             alpha_iterations, advance)
    except SoundnessError as e:
        click.echo(f"internal error: {e}", err=True)
        click.get_current_context().exit(UNSOUND_EXIT)
    result = distributed.gather_to_main(local, merge_shards)
    if result is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    report = base_report("certify", w, seed) | {
        "norm": norm,
        "pgd": {"steps": pgd_steps, "restarts": pgd_restarts, "time_s": result.pgd_time_s},
        "clean_accuracy": result.clean_accuracy,
        "results": [o.summary() for o in result.outcomes],
    }
    certify_table(report)
    if json_path:
        write_json(json_path, report)
    if html_path:
        write_certify_output(report, result.outcomes, w, html_path, steps=pgd_steps)


def _certify(w, part, eps, methods, norm, batch_size, seed, pgd_steps, pgd_restarts, alpha_iterations, advance):
    return certify_dataset(
        w.model.module,
        w.data.x[part],
        w.data.y[part],
        eps,
        methods,
        norm,
        num_classes=w.num_classes,
        batch_size=batch_size,
        seed=seed,
        pgd_steps=pgd_steps,
        pgd_restarts=pgd_restarts,
        alpha_iterations=alpha_iterations,
        device=w.device,
        on_batch=lambda k: advance(k),
        offset=part.start,
    )
