"""`robust certify`: verified accuracy per eps and bound method, cross-checked against PGD."""

from __future__ import annotations

import click

from robustcli.certify.bounders import METHODS as BOUNDERS
from robustcli.certify.spec_verify import BAB_BOUNDS, BAB_SPLITS
from robustcli.certify.verify import METHODS, SoundnessError, certify_dataset, merge_shards
from robustcli.core import distributed
from robustcli.core.errors import InputError
from robustcli.core.nn import model_float_dtype
from robustcli.html_report import check_output, html_option, write_certify_output
from robustcli.options import MultiOption, RobustCommand, config_option, data_options, eps_option, json_option, model_options, runtime_options
from robustcli.progress import progress_bar, shows_shard
from robustcli.report import base_report, write_json
from robustcli.requests import CertifyRequest
from robustcli.session import open_workload
from robustcli.smoothing_report import add_smoothing_options, certify_smoothing_command, reject_smoothing_options
from robustcli.tables import certify_table
from robustcli.verify_requests import SpecRequest

# A certified point that PGD broke (or that is misclassified) means a bound engine is wrong: a bug,
# reported on one line with its own exit code, never as a user error (2) or a failed check (1).
UNSOUND_EXIT = 3


@click.command("certify", cls=RobustCommand)
@config_option
@model_options
@data_options
@eps_option("Budgets (default 0.1 for linf, 0.5 for l2).", multiple=True)
@click.option(
    "--method",
    cls=MultiOption,
    type=click.Choice([*METHODS, "bab", "smoothing"]),
    help="Bound methods (default ibp): " + "; ".join(f"{m.name}: {m.summary}" for m in BOUNDERS.values())
    + ". The lirpa-* methods need auto_LiRPA. With --spec: ibp, crown, alpha-crown, bab (default all). "
    "smoothing: randomized smoothing (L2, --sigma).",
)
@click.option("--norm", type=click.Choice(["linf", "l2"]), default="linf", show_default=True)
@click.option("--pgd-steps", type=int, default=CertifyRequest.pgd_steps, show_default=True,
              help=f"PGD steps for the upper bound (with --spec: default {SpecRequest().attack_budget()[0]}).")
@click.option("--pgd-restarts", type=int, default=CertifyRequest.pgd_restarts, show_default=True,
              help=f"With --spec: default {SpecRequest().attack_budget()[1]}.")
@click.option("--alpha-iterations", type=int, default=CertifyRequest.alpha_iterations, show_default=True,
              help="alpha-CROWN optimisation steps.")
@click.option("--spec", type=click.Path(dir_okay=False), help="VNNLIB property: replaces --data and --eps.")
@click.option("--timeout", type=float, default=SpecRequest.timeout, help="With --spec: seconds before answering timeout.")
@click.option("--counterexample", type=click.Path(dir_okay=False), help="With --spec: counterexample file.")
@click.option("--result-file", type=click.Path(dir_okay=False),
              help="With --spec: a VNN-COMP 2022+ results file (sat / unsat / unknown / timeout, then a sat "
              "answer's witness), as run_instance.sh writes it.")
@click.option("--bab-split", type=click.Choice(BAB_SPLITS), default=SpecRequest.bab_split, show_default=True,
              help="With --spec: branch and bound splits the input box (input), ReLUs (relu), or input "
              "for at most 16 inputs (auto).")
@click.option("--bab-bounds", type=click.Choice(BAB_BOUNDS), default=SpecRequest.bab_bounds, show_default=True,
              help="With --spec: sub-problem bounds of ReLU branch and bound: the parent's (reuse), CROWN per sub-problem "
              "(refresh), or reuse for 30% of the time, then refresh (auto).")
@add_smoothing_options
@runtime_options
@json_option
@html_option
def command(
    model, arch, mean, std, allow_pickle, data, n, eps, method, norm, pgd_steps, pgd_restarts, alpha_iterations,
    spec, timeout, counterexample, result_file, bab_split, bab_bounds, device, batch_size, seed, json_path, html_path, **smoothing,
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
        from robustcli.spec_check import certify_spec, check_spec_combination

        check_spec_combination(data=data, n=n, eps=eps)
        ctx = click.get_current_context()
        named = lambda name: ctx.get_parameter_source(name) not in (  # noqa: E731
            click.core.ParameterSource.DEFAULT, None)
        # certify's PGD defaults size the dataset upper bound; the spec attack has its own unless named.
        request = SpecRequest(
            method=tuple(method), timeout=timeout, alpha_iterations=alpha_iterations, bab_split=bab_split,
            bab_bounds=bab_bounds, seed=seed,
            pgd_steps=pgd_steps if named("pgd_steps") else None,
            pgd_restarts=pgd_restarts if named("pgd_restarts") else None,
        )  # fmt: skip
        certify_spec(
            model, request, arch=arch, mean=mean, std=std, allow_pickle=allow_pickle, spec=spec,
            counterexample=counterexample, result_file=result_file, device=device, json_path=json_path,
        )
        return
    if "bab" in method or timeout is not None or counterexample is not None or result_file is not None:
        raise InputError("--method bab, --timeout, --counterexample and --result-file go with --spec prop.vnnlib")
    request = CertifyRequest(
        eps=tuple(eps), method=tuple(method), norm=norm, pgd_steps=pgd_steps, pgd_restarts=pgd_restarts,
        alpha_iterations=alpha_iterations, batch_size=batch_size, seed=seed,
    )  # fmt: skip
    methods, eps = request.methods, request.budgets
    with distributed.main_first():  # rank 0 fills the model/data cache before the other ranks read it
        w = open_workload(model, data, arch=arch, mean=mean, std=std, allow_pickle=allow_pickle, device=device, n=n)
    part = distributed.shard(len(w.data), batch_size)  # all points in one process; whole batches per rank
    # Bounders are built (graph traced, unsupported operations named) before any work starts.
    built = request.check_model(w.model.module, w.data.x[:2].to(w.device) if len(w.data) else None)
    total = (part.stop - part.start) * len(eps) * (len(methods) + 1)
    try:
        with progress_bar("certifying", total, show=shows_shard(part, len(w.data))) as advance:
            local = _certify(w, part, eps, methods, norm, batch_size, seed, pgd_steps, pgd_restarts,
                             alpha_iterations, advance, built)
    except SoundnessError as e:
        click.echo(f"internal error: {e}", err=True)
        click.get_current_context().exit(UNSOUND_EXIT)
    result = distributed.gather_to_main(local, merge_shards)
    if result is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    report = base_report("certify", w, seed) | {
        "model_dtype": str(model_float_dtype(w.model.module)).removeprefix("torch."),
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


def _certify(w, part, eps, methods, norm, batch_size, seed, pgd_steps, pgd_restarts, alpha_iterations, advance,
             built):
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
        bounders=built,
    )
