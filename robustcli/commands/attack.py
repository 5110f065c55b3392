"""`robust attack`: robust accuracy per attack and eps, the strong suite, gradient-masking diagnostics."""

from __future__ import annotations

import click
import torch

from robustcli.attacks.cw import CW_PRESETS
from robustcli.attacks.diagnostics import run_diagnostics
from robustcli.attacks.evaluate import Evaluation, evaluate, merge_shards
from robustcli.attacks.foolbox_backend import make_foolbox_attack
from robustcli.attacks.registry import ATTACKS, accepted_options, make_attack
from robustcli.attacks.suite import SUITES, merge_evaluations, run_strong_suite, strong_suite
from robustcli.core import distributed
from robustcli.errors import CheckFailed, InputError
from robustcli.html_report import check_output, html_option, write_attack_outputs
from robustcli.options import (
    MultiOption,
    RobustCommand,
    config_option,
    data_options,
    eps_option,
    json_option,
    model_options,
    runtime_options,
)
from robustcli.progress import evaluate_units, progress_bar, shows_shard
from robustcli.report import base_report, save_tensors, write_json
from robustcli.requests import AttackRequest
from robustcli.session import Workload, open_workload
from robustcli.tables import attack_table, diagnostics_table

def resolve_targets(request: AttackRequest, y: torch.Tensor, classes: int) -> torch.Tensor | None:
    """The target class of each point, or None for an untargeted attack (the form of `--target` is
    the request's to check; whether a class index exists depends on the model)."""
    target = request.target
    if target is None or target == "none":
        return None
    if target == "next":
        return (y + 1) % classes
    if target == "random":
        g = torch.Generator().manual_seed(request.seed)
        return (y + torch.randint(1, classes, y.shape, generator=g)) % classes
    cls = int(target)
    if not 0 <= cls < classes:
        raise InputError(f"--target {cls} is outside the model's classes 0..{classes - 1}")
    return torch.full_like(y, cls)


def run_attacks(
    w: Workload,
    request: AttackRequest,
    *,
    targets: torch.Tensor | None,
    keep_adversarials: bool,
    part: slice = slice(None),
) -> Evaluation:
    """Attack the points `part` (this rank's shard under torchrun: whole batches, see robustcli.distributed)."""
    eps_by_norm = request.budgets().eps
    plan = []
    for name in request.attacks:
        options = accepted_options(name, {**request.cw_options(), "queries": request.queries})  # what this attack takes
        ours = make_attack(name, steps=request.steps, restarts=request.restarts, **options)
        attack = (
            make_foolbox_attack(
                name, ours.norm, ours.minimization, steps=request.steps, restarts=request.restarts, **options
            )
            if request.backend == "foolbox"
            else ours
        )
        plan.append((attack, eps_by_norm[attack.norm]))
    y = w.data.y[part]
    with progress_bar("attacking", evaluate_units(plan, len(y)), show=shows_shard(part, len(w.data))) as advance:
        return evaluate(
            w.model.module,
            w.data.x[part],
            y,
            plan,
            device=w.device,
            batch_size=request.batch_size,
            seed=request.seed,
            targets=None if targets is None else targets[part],
            keep_adversarials=keep_adversarials,
            on_batch=lambda k: advance(k),
            offset=part.start or 0,
        )


@click.command("attack", cls=RobustCommand)
@config_option
@model_options
@data_options
@click.option(
    "--attack",
    "attack_names",
    cls=MultiOption,
    type=click.Choice(list(ATTACKS)),
    help="One or more attacks (default pgd).",
)
@eps_option("Linf budgets (default 0.1 0.2 0.3); the L2 budgets too when every attack is L2.", multiple=True)
@click.option("--eps-l2", cls=MultiOption, type=float, help="Budgets of L2 attacks such as cw (default 0.5 1 2).")
@click.option("--steps", type=int, default=None, help="Iterations (PGD 40, APGD and FAB 100, CW: its preset's).")
@click.option("--restarts", type=int, default=None, help="PGD random restarts; worst case per point is kept.")
@click.option("--target", default=None, help="Targeted attack: a class index, 'next' (y+1) or 'random'.")
@click.option("--confidence", type=float, default=0.0, show_default=True, help="CW confidence kappa.")
@click.option("--search-steps", type=int, default=None, help="CW binary-search steps over c (default: the preset's).")
@click.option(
    "--cw-preset",
    type=click.Choice(list(CW_PRESETS)),
    default="cheap",
    show_default=True,
    help="CW settings: cheap (100 steps, 5 searches, c0 1e-2, lr 0.1) or paper (10,000 steps, 9, 1e-3, 1e-2).",
)
@click.option("--backend", type=click.Choice(["ours", "foolbox"]), default="ours", show_default=True)
@click.option(
    "--suite",
    type=click.Choice(list(SUITES)),
    default=None,
    help="strong: APGD-CE, APGD-T, FAB-T, Square (AutoAttack standard), worst case per point.",
)
@click.option(
    "--suite-norm",
    type=click.Choice(["linf", "l2"]),
    default="linf",
    show_default=True,
    help="Norm of --suite: linf at --eps, l2 at --eps-l2.",
)
@click.option("--queries", type=int, default=None, help="Square attack query budget (default 5000).")
@click.option("--strict", is_flag=True, help="Exit with code 1 if any gradient-masking warning is raised.")
@runtime_options
@json_option
@click.option("--save-adv", type=click.Path(dir_okay=False), help="Save adversarial examples (.safetensors or .npz).")
@html_option
@click.option("--png", "png_path", type=click.Path(dir_okay=False), help="Write the image grid of broken points here (PNG).")
def command(
    model, arch, mean, std, allow_pickle, data, n, attack_names, eps, eps_l2, steps, restarts, target,
    confidence, search_steps, cw_preset, backend, suite, suite_norm, queries, strict, device, batch_size, seed,
    json_path, save_adv, html_path, png_path,
) -> None:  # fmt: skip
    """Attack a model and report robust accuracy per attack and eps, with gradient-masking checks.

    \b
    robust attack --model mnist-cnn --attack pgd --eps 0.1 0.2 0.3
    robust attack --model mnist-cnn --suite strong --eps 0.1 --strict
    robust attack --model my_model.pt --data my_test.npz --attack cw --json report.json
    """
    request = AttackRequest(
        attack=tuple(attack_names), eps=tuple(eps), eps_l2=tuple(eps_l2), steps=steps, restarts=restarts,
        target=target, confidence=confidence, search_steps=search_steps, cw_preset=cw_preset, backend=backend,
        suite=suite, suite_norm=suite_norm, queries=queries, batch_size=batch_size, seed=seed,
    )  # fmt: skip
    check_output(html_path, "--html", (".html", ".htm"))
    check_output(png_path, "--png", (".png",))
    if save_adv and not save_adv.endswith((".safetensors", ".npz")):
        raise InputError(f"--save-adv {save_adv}: use a .safetensors or .npz file name")
    budgets = request.budgets()
    if (eps or eps_l2) and distributed.is_main():  # a budget flag was set, yet some attacks run at the defaults
        for norm in dict.fromkeys(request.norms):
            if budgets.source[norm] == "default":
                names = ", ".join(a for a in request.attacks if make_attack(a).norm == norm) or "the suite"
                values = " ".join(f"{e:g}" for e in budgets.eps[norm])
                flag = "--eps-l2" if norm == "l2" else "--eps"
                click.echo(f"note: {names} ({norm}) run at the default {norm} budgets {values}; set {flag} to choose", err=True)
    with distributed.main_first():  # rank 0 fills the model/data cache before the other ranks read it
        w = open_workload(model, data, arch=arch, mean=mean, std=std, allow_pickle=allow_pickle, device=device, n=n)
    targets = resolve_targets(request, w.data.y, w.num_classes)
    part = distributed.shard(len(w.data), batch_size)  # all points in one process; whole batches per rank
    result = None
    if request.attacks:
        result = run_attacks(
            w, request, targets=targets, keep_adversarials=bool(save_adv or html_path or png_path), part=part
        )
    if suite:
        suite_eps = budgets.eps[suite_norm]
        units = evaluate_units(strong_suite(suite_eps, suite_norm), part.stop - part.start)
        with progress_bar(f"{suite} suite", units, show=shows_shard(part, len(w.data))) as advance:
            strong = run_strong_suite(
                w.model.module,
                w.data.x[part],
                w.data.y[part],
                suite_eps,
                device=w.device,
                norm=suite_norm,
                queries=queries or 5000,
                batch_size=batch_size,
                seed=seed,
                targets=None if targets is None else targets[part],
                keep_adversarials=bool(save_adv or html_path or png_path),
                on_batch=lambda k: advance(k),
                offset=part.start,
            )
        result = strong if result is None else merge_evaluations(result, strong)
    result = distributed.gather_to_main(result, merge_shards)
    if result is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    diag = run_diagnostics(result, w.model.module, w.data.x, w.data.y, device=w.device, seed=seed)
    report = base_report("attack", w, seed) | {
        "backend": backend,
        "suite": suite,
        "suite_norm": suite_norm if suite else None,
        # the CW settings that ran (preset "cheap" or "paper"; see docs/attacks.md)
        "cw": request.cw_settings() if "cw" in request.attacks else None,
        "targeted": targets is not None,
        "clean_accuracy": result.clean_accuracy,
        "results": [o.summary() | {"eps_source": budgets.source[o.norm]} for o in result.outcomes],
        "diagnostics": [vars(c) for c in diag.checks],
        "warnings": [x.to_dict() for x in diag.warnings],
    }
    attack_table(report, result.clean_accuracy)
    diagnostics_table(diag)
    if json_path:
        write_json(json_path, report)
    if save_adv:
        save_tensors(save_adv, {"y": w.data.y, **{f"x_adv/{k}": v for k, v in result.adversarials.items()}})
    if html_path or png_path:
        write_attack_outputs(report, result, w, html_path, png_path)
    if strict and diag.warnings:
        codes = ", ".join(dict.fromkeys(x.code for x in diag.warnings))
        raise CheckFailed(f"{len(diag.warnings)} gradient-masking warning(s) ({codes}); see the report")
