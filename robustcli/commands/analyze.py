"""`robust analyze`: power-law scaling of adversarial error and boundary tilting."""

from __future__ import annotations

import math

import click
import torch

from robustcli.analyses.powerlaw import DEFAULT_MAX_ERROR, DEFAULT_MIN_BROKEN
from robustcli.analyses.scaling import DEFAULT_RANGE, ScalingResult, scaling_analysis
from robustcli.analyses.tilting import local_tilting, nearest_centroid, signs, tilting_sweep
from robustcli.attacks.registry import ATTACKS, make_attack
from robustcli.data import BUILTIN_DATASETS, Dataset, load_dataset
from robustcli.core.device import resolve_device
from robustcli.core.errors import InputError
from robustcli.core.nn import model_float_dtype
from robustcli.options import (
    MultiOption,
    RobustGroup,
    config_option,
    data_option,
    data_options,
    json_option,
    model_options,
    points_option,
    runtime_options,
)
from robustcli.progress import evaluate_units, progress_bar
from robustcli.report import base_report, dtype_name, fmt, pct, print_table, write_json
from robustcli.requests import ScalingRequest, TiltingRequest
from robustcli.session import open_workload

png_option = click.option("--png", "png_path", type=click.Path(dir_okay=False), help="Write a figure here (PNG).")


@click.group("analyze", cls=RobustGroup)
def command() -> None:
    """Analyses of why models are not robust: power-law scaling, boundary tilting."""


def scaling_report(result: ScalingResult, base: dict, options: dict) -> dict:
    return base | {
        "options": options,
        "clean_accuracy": result.clean_accuracy,
        "regime_rule": (
            f"grid points with >= {result.min_broken} broken points and 0 < error <= {result.max_error:g}; "
            "error = broken / correctly classified"
        ),
        "curves": [c.summary() for c in result.curves],
        "logit_gaps": result.gap_summary(),
        "normalised_gaps": {n: result.gaps.normalised(n).tolist() for n in result.gaps.grad_norm},
    }


def scaling_tables(report: dict) -> None:
    rows = []
    for c in report["curves"]:
        f = c["fit"]
        if f is None:
            rows.append([c["attack"], c["norm"], "-", str(sum(c["in_fit"])), "-", "-", "-", "-"])
            continue
        rows.append(
            [
                c["attack"],
                c["norm"],
                f"{f['eps_range'][0]:.2g}-{f['eps_range'][1]:.2g}",
                str(f["points"]),
                f"{f['gamma']:.3f}",
                f"[{fmt(f['gamma_ci'][0], 3)}, {fmt(f['gamma_ci'][1], 3)}]",
                f"[{fmt(f['bootstrap_ci'][0], 3)}, {fmt(f['bootstrap_ci'][1], 3)}]",
                f"{f['r2']:.4f}",
            ]
        )
    level = next((c["fit"]["level"] for c in report["curves"] if c["fit"]), 0.95)
    print_table(
        f"Power-law fit err = A * eps^gamma: {report['model']} on {report['data']} (n={report['n']}, "
        f"clean acc {pct(report['clean_accuracy'])}, {report['curves'][0]['attacked']} attacked)",
        ["attack", "norm", "fit eps", "pts", "gamma", f"{level:.0%} CI (t)", f"{level:.0%} CI (boot)", "R^2"],
        rows,
        caption=f"regime: {report['regime_rule']}",
    )
    no_fit = [[c["attack"], c["fit_problem"]] for c in report["curves"] if c["fit"] is None]
    if no_fit:
        print_table("Curves without a fit", ["attack", "reason"], no_fit)
    norms = list(dict.fromkeys(c["norm"] for c in report["curves"]))
    for norm in norms:
        curves = [c for c in report["curves"] if c["norm"] == norm]
        rows = []
        for i, eps in enumerate(curves[0]["eps"]):
            row = [f"{eps:.4g}"]
            for c in curves:
                mark = "*" if c["in_fit"][i] else ""
                row.append(f"{pct(c['error'][i])}{mark}")
            row.append(pct(curves[0]["first_order_error"][i]))
            rows.append(row)
        print_table(
            f"Adversarial error vs {norm} eps (* = in the fit)",
            ["eps", *[c["attack"] for c in curves], "first order"],
            rows,
            caption="first order: P(gap / ||grad_x gap||_dual < eps) over correctly classified points",
        )
    g = report["logit_gaps"]
    gap_rows = [["logit gap (top - 2nd)", *[fmt(g["gap"][k], 3) for k in ("q10", "q25", "q50", "q75", "q90")]]]
    for norm, q in g["normalised_gap"].items():
        gap_rows.append([f"gap / ||grad gap|| ({norm} attacks)", *[fmt(q[k], 3) for k in ("q10", "q25", "q50", "q75", "q90")]])
    print_table(f"Logit gaps over {g['points']} correctly classified points", ["quantity", "10%", "25%", "50%", "75%", "90%"], gap_rows)


@command.command("scaling")
@config_option
@model_options
@data_options
@click.option("--attack", "attack", cls=MultiOption, type=click.Choice(list(ATTACKS)), help="Attacks (default fgsm pgd).")
@click.option("--eps-min", type=float, default=None, help=f"Smallest Linf eps of the grid (default {DEFAULT_RANGE['linf'][0]:g}).")
@click.option("--eps-max", type=float, default=None, help=f"Largest Linf eps of the grid (default {DEFAULT_RANGE['linf'][1]:g}).")
@click.option("--eps-l2-min", type=float, default=None, help=f"Smallest L2 eps (default {DEFAULT_RANGE['l2'][0]:g}).")
@click.option("--eps-l2-max", type=float, default=None, help=f"Largest L2 eps (default {DEFAULT_RANGE['l2'][1]:g}).")
@click.option("--points", type=int, default=ScalingRequest.points, show_default=True, help="Grid points (log-spaced).")
@click.option("--steps", type=int, default=None, help="Attack iterations (PGD default 40).")
@click.option("--restarts", type=int, default=None, help="PGD restarts.")
@click.option("--max-error", type=float, default=DEFAULT_MAX_ERROR, show_default=True, help="Fit only points with error up to this.")
@click.option("--min-broken", type=int, default=DEFAULT_MIN_BROKEN, show_default=True, help="Fit only points with at least this many broken points.")
@click.option("--level", type=float, default=ScalingRequest.level, show_default=True, help="Confidence level of gamma's intervals.")
@click.option("--resamples", type=int, default=ScalingRequest.resamples, show_default=True, help="Bootstrap resamples for gamma's interval.")
@runtime_options
@json_option
@png_option
def scaling(
    model, arch, mean, std, allow_pickle, data, n, attack, eps_min, eps_max, eps_l2_min, eps_l2_max, points,
    steps, restarts, max_error, min_broken, level, resamples, device, batch_size, seed, json_path, png_path,
) -> None:  # fmt: skip
    """Adversarial error vs eps on a log grid, power-law fit, and the logit-gap prediction (Cubuk et al. 2017).

    \b
    robust analyze scaling --model mnist-mlp --attack fgsm pgd --n 500 --png scaling.png
    """
    request = ScalingRequest(
        attack=tuple(attack), eps_min=eps_min, eps_max=eps_max, eps_l2_min=eps_l2_min, eps_l2_max=eps_l2_max,
        points=points, steps=steps, restarts=restarts, max_error=max_error, min_broken=min_broken, level=level,
        resamples=resamples, png=png_path, batch_size=batch_size, seed=seed,
    )  # fmt: skip
    attacks = [make_attack(a, steps=request.steps, restarts=request.restarts) for a in request.attacks]
    grids = request.grids()
    w = open_workload(model, data, arch=arch, mean=mean, std=std, allow_pickle=allow_pickle, device=device, n=n)
    # every (point, budget) of every attack, then one gradient pass over the points
    total = evaluate_units([(a, grids[a.norm]) for a in attacks], len(w.data)) + len(w.data)
    with progress_bar("scaling", total) as advance:
        result = scaling_analysis(
            w.model.module, w.data.x, w.data.y, attacks,
            grids=grids, device=w.device, batch_size=request.batch_size, seed=request.seed,
            max_error=request.max_error, min_broken=request.min_broken, level=request.level,
            resamples=request.resamples, on_batch=lambda k: advance(k),
        )  # fmt: skip
    options = {"attacks": list(request.attacks), "points": points, "steps": steps, "restarts": restarts,
               "resamples": resamples}  # fmt: skip
    report = scaling_report(result, base_report("analyze scaling", w, seed), options)
    scaling_tables(report)
    if json_path:
        write_json(json_path, report)
    if png_path:
        from robustcli.analysis_plots import scaling_png

        scaling_png(png_path, report)


def two_classes(data: Dataset, classes: tuple[int, int], what: str) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = classes
    keep = (data.y == a) | (data.y == b)
    for c in classes:
        if not bool((data.y == c).any()):
            raise InputError(f"class {c} has no points in the {what} data ({data.name}); pick classes it contains")
    return data.x[keep], signs(data.y[keep], a, b)


def tilting_rows_table(report: dict) -> None:
    rows = []
    for r in report["rows"]:
        wd = "centroid" if r["weight_decay"] is None else f"{r['weight_decay']:g}"
        rows.append(
            [wd, f"{r['angle_deg']:.2f}", f"{r['strength']:.4f}", f"{r['empirical_strength']:.3f}",
             f"{r['median_distance']:.3f}", pct(r["train_accuracy"]), pct(r["test_accuracy"]), f"{r['weight_norm']:.3g}"]
        )  # fmt: skip
    a, b = report["classes"]
    print_table(
        f"Boundary tilting on {report['data']}: {a} vs {b} (train {report['train_points']}, test {report['test_points']})",
        ["decay", "angle°", "strength", "emp. str.", "med. dist", "train acc", "test acc", "||w||"],
        rows,
        caption="strength = d_adv(nearest centroid) / d_adv(C) on train (= 1/cos angle); "
        "emp. strength = median L2 distance to the boundary of correct test points, nearest centroid's / C's",
    )


@command.command("tilting")
@config_option
@data_option("mnist", help="mnist, digits, or a data file (used for both fit and test).")
@click.option("--classes", cls=MultiOption, type=int, help="The two classes I and J (default 3 7).")
@click.option("--weight-decay", "weight_decay", cls=MultiOption, type=float, help="L2 weight decays to sweep (default 0 1e-4 1e-3 1e-2 1e-1).")
@click.option("--max-iter", type=int, default=TiltingRequest.max_iter, show_default=True, help="L-BFGS iterations per fit.")
@click.option("--model", default=None, help="Instead of a sweep: the local linear map of this model at each test point.")
@click.option("--arch", default=None, help="Architecture for a state dict (with --model).")
@click.option("--allow-pickle", is_flag=True, help="Load a pickled whole model (with --model; only files you trust).")
@points_option(help="Use the first n test points of the two classes (default all).")
@runtime_options
@json_option
@png_option
def tilting(
    data, classes, weight_decay, max_iter, model, arch, allow_pickle, n, device, batch_size, seed, json_path, png_path,
) -> None:  # fmt: skip
    """Deviation angle from the nearest-centroid classifier and adversarial strength (Tanay & Griffin 2016).

    \b
    robust analyze tilting --data mnist --classes 3 7 --weight-decay 0 1e-4 1e-3 1e-2 1e-1 --png tilting.png
    robust analyze tilting --model mnist-mlp --classes 3 7 --n 200
    """
    request = TiltingRequest(
        classes=tuple(classes), weight_decay=tuple(weight_decay), max_iter=max_iter, model=model, n=n,
        png=png_path, batch_size=batch_size, seed=seed,
    )  # fmt: skip
    classes = request.classes
    test = load_dataset(data, "test")
    train = load_dataset(data, "train") if data in BUILTIN_DATASETS else test
    x_tr, t_tr = two_classes(train, classes, "training")
    x_te, t_te = two_classes(test, classes, "test")
    if n is not None:
        x_te, t_te = x_te[:n], t_te[:n]
    base = {"command": "analyze tilting", "data": test.name.split(":")[0], "classes": list(classes), "seed": seed,
            "train_points": len(t_tr), "test_points": len(t_te),
            "note": None if data in BUILTIN_DATASETS else "a data file has no train split: fit and test use the same points"}  # fmt: skip
    if model:
        report = _local_tilting(model, arch, allow_pickle, data, device, batch_size, classes, x_tr, t_tr, x_te, t_te, base)
    else:
        decays = request.decays
        dev = resolve_device(device)
        with progress_bar("fitting", len(decays)) as advance:
            rows = tilting_sweep(
                x_tr.to(dev), t_tr.to(dev), x_te.to(dev), t_te.to(dev), decays,
                seed=seed, max_iter=max_iter, on_fit=lambda k: advance(k),
            )  # fmt: skip
        report = base | {"mode": "sweep", "device": str(dev), "max_iter": max_iter, "rows": [r.summary() for r in rows]}
        tilting_rows_table(report)
    if json_path:
        write_json(json_path, report)
    if png_path:
        from robustcli.analysis_plots import tilting_png

        tilting_png(png_path, report)


def _local_tilting(model, arch, allow_pickle, data, device, batch_size, classes, x_tr, t_tr, x_te, t_te, base) -> dict:
    w = open_workload(model, data, arch=arch, allow_pickle=allow_pickle, device=device, n=1)
    x_te = x_te.to(w.data.x.dtype)  # the model's precision (exact cast): a float64 model's gradients in float64
    if max(classes) >= w.num_classes:
        raise InputError(f"--classes {classes[0]} {classes[1]}: the model has classes 0..{w.num_classes - 1}")
    nc = nearest_centroid(x_tr.to(w.device), t_tr.to(w.device))
    local = local_tilting(w.model.module, x_te, t_te, classes[0], classes[1], nc.w, batch_size=batch_size)
    angle, strength, dist = local.angle_deg.cpu(), local.strength.cpu(), local.distance.cpu()
    q = lambda t, p: t.double().quantile(p).item() if len(t) else math.nan  # noqa: E731
    report = base | {
        "mode": "local",
        "model": w.model.name,
        "model_dtype": dtype_name(model_float_dtype(w.model.module)),
        "device": str(w.device),
        "pair_accuracy": local.correct.double().mean().item(),
        "angle_deg": {"q10": q(angle, 0.1), "median": q(angle, 0.5), "q90": q(angle, 0.9)},
        "strength_median": q(strength[torch.isfinite(strength)], 0.5),
        "strength_infinite": int((~torch.isfinite(strength)).sum()),
        "distance_median": q(dist[local.correct.cpu()], 0.5),
        "nearest_centroid_distance_median": nc.distances(x_te.to(w.device)).median().item(),
        "angles_deg": angle.tolist(),
    }
    a, b = classes
    print_table(
        f"Local boundary tilting of {w.model.name}: {a} vs {b} ({len(t_te)} test points)",
        ["quantity", "value"],
        [
            ["deviation angle, 10% / 50% / 90% (deg)", " / ".join(f"{report['angle_deg'][k]:.1f}" for k in ("q10", "median", "q90"))],
            ["local strength 1/cos, median", fmt(report["strength_median"])],
            ["points at >= 90 deg (infinite strength)", str(report["strength_infinite"])],
            ["pair accuracy (sign of Z_J - Z_I)", pct(report["pair_accuracy"])],
            ["first-order L2 distance to the pair boundary, median", fmt(report["distance_median"])],
            ["nearest-centroid L2 distance, median", fmt(report["nearest_centroid_distance_median"])],
        ],
    )
    return report
