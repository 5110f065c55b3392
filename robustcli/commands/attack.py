"""`robust attack`: robust accuracy per attack and eps, the strong suite, gradient-masking diagnostics."""

from __future__ import annotations

import click
import torch

from robustcli.attacks.diagnostics import Diagnostics, run_diagnostics
from robustcli.attacks.evaluate import Evaluation, evaluate, merge_shards
from robustcli.attacks.foolbox_backend import FOOLBOX_NAMES, make_foolbox_attack
from robustcli.attacks.registry import ATTACKS, accepted_options, make_attack
from robustcli.attacks.suite import SUITES, merge_evaluations, run_strong_suite
from robustcli.core import distributed
from robustcli.errors import CheckFailed, InputError
from robustcli.html_report import check_output, html_option, write_attack_outputs
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
from robustcli.report import base_report, pct, print_table, save_tensors, stdout, write_json
from robustcli.session import Workload, open_workload

FOOLBOX_ATTACKS = FOOLBOX_NAMES
DEFAULT_EPS = {"linf": (0.1, 0.2, 0.3), "l2": (0.5, 1.0, 2.0)}


def check_eps(values: tuple[float, ...], norm: str) -> None:
    for e in values:
        if e != e or e < 0:
            raise InputError(f"eps must be >= 0, got {e}")
        if norm == "linf" and e > 1:
            raise InputError(f"Linf eps {e} exceeds 1, the whole [0, 1] pixel range; use a value in [0, 1]")


def budgets(attack_norms: list[str], eps: tuple[float, ...], eps_l2: tuple[float, ...]) -> dict[str, tuple[float, ...]]:
    """`--eps` is the Linf budget, and the L2 budget too when every chosen attack is L2."""
    only_l2 = all(n == "l2" for n in attack_norms)
    out = {
        "linf": eps or DEFAULT_EPS["linf"],
        "l2": eps_l2 or (eps if only_l2 and eps else DEFAULT_EPS["l2"]),
    }
    for norm, values in out.items():
        check_eps(values, norm)
    return out


def resolve_targets(target: str | None, y: torch.Tensor, classes: int, seed: int) -> torch.Tensor | None:
    if target is None or target == "none":
        return None
    if target == "next":
        return (y + 1) % classes
    if target == "random":
        g = torch.Generator().manual_seed(seed)
        return (y + torch.randint(1, classes, y.shape, generator=g)) % classes
    try:
        cls = int(target)
    except ValueError:
        raise InputError(f"--target must be none, next, random or a class index, got {target!r}") from None
    if not 0 <= cls < classes:
        raise InputError(f"--target {cls} is outside the model's classes 0..{classes - 1}")
    return torch.full_like(y, cls)


def attack_table(report: dict, clean_accuracy: float) -> None:
    rows = [
        [
            f"{r['attack']}*" if r.get("cumulative") else r["attack"],
            r["norm"],
            f"{r['eps']:g}",
            pct(clean_accuracy),
            pct(r["robust_accuracy"]),
            pct(r["success_rate"]),
            r["median_perturbation"],
            f"{r['time_s']:.2f}s",
            f"{r['images_per_s']:.0f}",
        ]
        for r in report["results"]
    ]
    columns = ["attack", "norm", "eps", "clean acc", "robust acc", "success", "median pert.", "time", "img/s"]
    caption = (
        "* strong suite: each attack ran only on the points still unbroken; its robust acc is after it "
        "and the suite attacks above it, its success rate is over the points it ran on"
        if any(r.get("cumulative") for r in report["results"])
        else None
    )
    print_table(f"Robustness of {report['model']} on {report['data']} (n={report['n']})", columns, rows, caption)


def diagnostics_table(diag: Diagnostics) -> None:
    rows = [[c.code, c.ran_on, c.result, c.status] for c in diag.checks]
    print_table("Gradient-masking diagnostics", ["check", "ran on", "result", "status"], rows)
    for w in diag.warnings:
        stdout.print(f"[bold yellow]warning[/] {w.code}: {w.message}\n  what to do: {w.advice}")


def run_attacks(
    w: Workload,
    names: tuple[str, ...],
    eps_by_norm: dict[str, tuple[float, ...]],
    *,
    backend: str,
    steps: int | None,
    restarts: int | None,
    cw_options: dict,
    batch_size: int,
    seed: int,
    targets: torch.Tensor | None,
    keep_adversarials: bool,
    queries: int | None = None,
    part: slice = slice(None),
) -> Evaluation:
    """Attack the points `part` (this rank's shard under torchrun: whole batches, see robustcli.distributed)."""
    plan = []
    for name in names:
        options = accepted_options(name, {**cw_options, "queries": queries})  # what this attack takes
        ours = make_attack(name, steps=steps, restarts=restarts, **options)
        attack = (
            make_foolbox_attack(name, ours.norm, ours.minimization, steps=steps, restarts=restarts, **options)
            if backend == "foolbox"
            else ours
        )
        plan.append((attack, eps_by_norm[attack.norm]))
    y = w.data.y[part]
    total = sum(len(y) * (1 if a.minimization else len(e)) for a, e in plan)
    with progress_bar("attacking", total) as advance:
        return evaluate(
            w.model.module,
            w.data.x[part],
            y,
            plan,
            device=w.device,
            batch_size=batch_size,
            seed=seed,
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
@click.option("--eps", cls=MultiOption, type=float, help="Budgets (Linf; default 0.1 0.2 0.3).")
@click.option("--eps-l2", cls=MultiOption, type=float, help="Budgets for L2 attacks (default 0.5 1 2).")
@click.option("--steps", type=int, default=None, help="Iterations (PGD default 40, CW default 100).")
@click.option("--restarts", type=int, default=None, help="PGD random restarts; worst case per point is kept.")
@click.option("--target", default=None, help="Targeted attack: a class index, 'next' (y+1) or 'random'.")
@click.option("--confidence", type=float, default=0.0, show_default=True, help="CW confidence kappa.")
@click.option("--search-steps", type=int, default=5, show_default=True, help="CW binary-search steps over c.")
@click.option("--backend", type=click.Choice(["ours", "foolbox"]), default="ours", show_default=True)
@click.option(
    "--suite",
    type=click.Choice(list(SUITES)),
    default=None,
    help="strong: APGD-CE, APGD-T (DLR), Square at the Linf --eps, worst case per point (AutoAttack-style).",
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
    confidence, search_steps, backend, suite, queries, strict, device, batch_size, seed, json_path, save_adv,
    html_path, png_path,
) -> None:  # fmt: skip
    """Attack a model and report robust accuracy per attack and eps, with gradient-masking checks.

    \b
    robust attack --model mnist-cnn --attack pgd --eps 0.1 0.2 0.3
    robust attack --model mnist-cnn --suite strong --eps 0.1 --strict
    robust attack --model my_model.pt --data my_test.npz --attack cw --json report.json
    """
    names = tuple(dict.fromkeys(attack_names or (() if suite else ("pgd",))))
    for flag, v in (
        ("--steps", steps), ("--restarts", restarts), ("--batch-size", batch_size), ("--queries", queries),
    ):  # fmt: skip
        if v is not None and v < 1:
            raise InputError(f"{flag} must be >= 1, got {v}")
    check_output(html_path, "--html", (".html", ".htm"))
    check_output(png_path, "--png", (".png",))
    if save_adv and not save_adv.endswith((".safetensors", ".npz")):
        raise InputError(f"--save-adv {save_adv}: use a .safetensors or .npz file name")
    if backend == "foolbox" and (unsupported := [a for a in names if a not in FOOLBOX_ATTACKS]):
        raise InputError(
            f"--backend foolbox has no {', '.join(unsupported)}; it covers {', '.join(FOOLBOX_ATTACKS)}"
        )
    norms = [make_attack(a).norm for a in names] + (["linf"] if suite else [])
    eps_by_norm = budgets(norms, tuple(eps), tuple(eps_l2))
    with distributed.main_first():  # rank 0 fills the model/data cache before the other ranks read it
        w = open_workload(model, data, arch=arch, mean=mean, std=std, allow_pickle=allow_pickle, device=device, n=n)
    targets = resolve_targets(target, w.data.y, w.num_classes, seed)
    part = distributed.shard(len(w.data), batch_size)  # all points in one process; whole batches per rank
    result = None
    if names:
        result = run_attacks(
            w,
            names,
            eps_by_norm,
            backend=backend,
            steps=steps,
            restarts=restarts,
            cw_options={"confidence": confidence, "binary_search_steps": search_steps},
            queries=queries,
            batch_size=batch_size,
            seed=seed,
            targets=targets,
            keep_adversarials=bool(save_adv or html_path or png_path),
            part=part,
        )
    if suite:
        with progress_bar(f"{suite} suite", 3 * (part.stop - part.start) * len(eps_by_norm["linf"])) as advance:
            strong = run_strong_suite(
                w.model.module,
                w.data.x[part],
                w.data.y[part],
                eps_by_norm["linf"],
                device=w.device,
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
        "targeted": targets is not None,
        "clean_accuracy": result.clean_accuracy,
        "results": [o.summary() for o in result.outcomes],
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
