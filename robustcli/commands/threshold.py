"""`robust threshold`: a conservative blocking threshold for a classifier used as a filter."""

from __future__ import annotations

import click
import torch

from robustcli.defenses.thresholds import (
    FilterRates,
    Rate,
    attacked_unsafe_probability,
    check_calibration_size,
    choose_threshold,
    filter_rates,
    rate_curves,
    unsafe_probability,
)
from robustcli.data import Dataset, load_dataset
from robustcli.core.errors import InputError
from robustcli.options import MultiOption, RobustCommand, config_option, data_option, eps_option, json_option, model_options, points_option, runtime_options
from robustcli.progress import progress_bar
from robustcli.report import atomic_path, base_report, print_table, write_json
from robustcli.requests import ThresholdRequest
from robustcli.session import check_model_on_data, in_model_precision, open_workload

SPLIT_SEED = 0  # the calibration/test split of one file never depends on --seed


def split_calibration(data: Dataset, share: float) -> tuple[Dataset, Dataset]:
    """A fixed random split of `data` into (calibration, test)."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(SPLIT_SEED))
    k = int(round(share * len(data)))
    cal, test = order[:k], order[k:]
    return (
        Dataset(data.x[cal], data.y[cal], f"{data.name} calibration half ({k})"),
        Dataset(data.x[test], data.y[test], f"{data.name} test half ({len(test)})"),
    )


def _probabilities(model, data: Dataset, unsafe: torch.Tensor, attack: str, eps: float, steps: int, restarts: int,
                   batch_size: int, seed: int, label: str) -> dict[str, torch.Tensor]:  # fmt: skip
    is_unsafe = torch.isin(data.y, unsafe)
    x_unsafe = data.x[is_unsafe]
    p_unsafe = unsafe_probability(model, x_unsafe, unsafe).cpu()
    if attack == "none" or eps == 0:
        p_attacked = p_unsafe.clone()
    else:
        with progress_bar(f"attacking unsafe {label} inputs", len(x_unsafe)) as advance:
            p_attacked = attacked_unsafe_probability(
                model, x_unsafe, unsafe, eps, steps=steps, restarts=restarts, batch_size=batch_size, seed=seed,
                on_batch=advance,
            ).cpu()  # fmt: skip
    return {"unsafe": p_unsafe, "attacked": p_attacked, "safe": unsafe_probability(model, data.x[~is_unsafe], unsafe).cpu()}


def _rate_json(r: Rate) -> dict:
    return {"events": r.events, "n": r.n, "rate": r.rate, "ci95": list(r.ci)}


def _rates_json(f: FilterRates) -> dict:
    return {
        "threshold": f.threshold,
        "fnr_clean": _rate_json(f.fnr_clean),
        "fnr_attacked": _rate_json(f.fnr_attacked),
        "safe_blocked": _rate_json(f.safe_blocked),
    }


def _cell(r: Rate) -> str:
    return f"{100 * r.rate:.2f}% [{100 * r.ci[0]:.2f}, {100 * r.ci[1]:.2f}] ({r.events}/{r.n})"


def _plot(path: str, curves: dict, chosen: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    t = curves["threshold"]
    ax.plot(t, curves["fnr_clean"], label="FNR, clean unsafe inputs")
    ax.plot(t, curves["fnr_attacked"], label="FNR, attacked unsafe inputs")
    ax.plot(t, curves["safe_blocked"], label="safe inputs blocked")
    ax.axvline(chosen, color="k", ls="--", lw=1, label=f"chosen {chosen:.3g}")
    ax.axvline(0.5, color="grey", ls=":", lw=1, label="0.5")
    ax.set_xscale("log")
    ax.set_xlabel("threshold on unsafe probability (block iff p >= threshold)")
    ax.set_ylabel("rate on the test split")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


@click.command("threshold", cls=RobustCommand)
@config_option
@model_options
@data_option(help="Data split into calibration and test halves (default: the model's bundled test split).")
@points_option(help="Use only the first n points of --data.")
@click.option("--calibration-data", default=None, help="A separate calibration file; --data is then all test.")
@click.option("--calibration-share", type=float, default=ThresholdRequest.calibration_share, show_default=True, help="Share of --data used for calibration.")
@click.option("--unsafe-class", "unsafe_class", cls=MultiOption, type=int, required=True, help="Class(es) the filter must block.")
@click.option("--target-fnr", type=float, default=ThresholdRequest.target_fnr, show_default=True, help="Highest tolerated share of unsafe inputs let through.")
@click.option("--confidence", type=float, default=ThresholdRequest.confidence, show_default=True, help="Level of the one-sided Clopper-Pearson bound.")
@click.option("--attack", type=click.Choice(["pgd", "none"]), default=ThresholdRequest.attack, show_default=True)
@eps_option("Linf budget of the attack on unsafe inputs.", default=ThresholdRequest.eps)
@click.option("--steps", type=int, default=ThresholdRequest.steps, show_default=True)
@click.option("--restarts", type=int, default=ThresholdRequest.restarts, show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="PNG of FNR and safe-block rate vs threshold.")
@runtime_options
@json_option
def command(
    model, arch, mean, std, allow_pickle, data, n, calibration_data, calibration_share, unsafe_class, target_fnr,
    confidence, attack, eps, steps, restarts, plot, device, batch_size, seed, json_path,
) -> None:  # fmt: skip
    """Choose a blocking threshold that lets through almost no unsafe input, attacked or not.

    On the calibration split, picks the highest threshold whose one-sided Clopper-Pearson upper
    bound on the false-negative rate is <= --target-fnr for clean and attacked unsafe inputs;
    reports FNR and the share of safe inputs blocked on the test split, and the same at 0.5.
    Exit 2 when the calibration split is too small to certify the target with any threshold.

    \b
    robust threshold --model mnist-cnn --unsafe-class 0 --target-fnr 0.05 --attack pgd --eps 0.1
    """
    request = ThresholdRequest(
        unsafe_class=tuple(unsafe_class), calibration_share=calibration_share, target_fnr=target_fnr,
        confidence=confidence, attack=attack, eps=eps, steps=steps, restarts=restarts, plot=plot,
        batch_size=batch_size, seed=seed,
    )  # fmt: skip
    w = open_workload(model, data, arch=arch, mean=mean, std=std, allow_pickle=allow_pickle, device=device, n=n)
    request.check_classes(w.num_classes)
    if calibration_data:
        cal = in_model_precision(w, load_dataset(calibration_data))
        check_model_on_data(w.model.module, cal, w.device)
        test = w.data
    else:
        cal, test = split_calibration(w.data, calibration_share)
    unsafe = torch.tensor(request.unsafe, dtype=torch.long)
    check_calibration_size(int(torch.isin(cal.y, unsafe).sum()), target_fnr, confidence)
    opts = dict(attack=attack, eps=eps, steps=steps, restarts=restarts, batch_size=batch_size, seed=seed)
    p_cal = _probabilities(w.model.module, cal, unsafe, label="calibration", **opts)
    # Checked before attacking the test split: a calibration split that cannot certify stops here.
    choice = choose_threshold(p_cal["unsafe"], p_cal["attacked"], target_fnr, confidence)
    p_test = _probabilities(w.model.module, test, unsafe, label="test", **opts)
    if len(p_test["unsafe"]) == 0 or len(p_test["safe"]) == 0:
        raise InputError(f"the test split {test.name} needs both unsafe and safe inputs; use more data")
    at_chosen = filter_rates(choice.threshold, p_test["unsafe"], p_test["attacked"], p_test["safe"])
    at_half = filter_rates(0.5, p_test["unsafe"], p_test["attacked"], p_test["safe"])
    attack_name = "none" if attack == "none" or eps == 0 else f"PGD-{steps} Linf eps {eps:g}"
    print_table(
        f"Filter thresholds for {w.model.name}, unsafe classes {unsafe.tolist()} (test: {test.name})",
        ["threshold", "FNR clean [95% CI]", "FNR attacked [95% CI]", "safe blocked [95% CI]"],
        [
            [f"{r.threshold:.4g}" + (" (chosen)" if r is at_chosen else " (default)"), _cell(r.fnr_clean),
             _cell(r.fnr_attacked), _cell(r.safe_blocked)]
            for r in (at_chosen, at_half)
        ],  # fmt: skip
        caption=(
            f"calibration ({cal.name}): {choice.n_unsafe} unsafe inputs, {choice.misses_attacked} let through "
            f"after the attack; FNR upper bound {choice.fnr_upper_attacked:.4g} attacked, "
            f"{choice.fnr_upper_clean:.4g} clean (target {target_fnr:g}, {100 * confidence:g}% one-sided). "
            f"Attack: {attack_name}."
        ),
    )
    if plot:
        _plot(plot, rate_curves(p_test["unsafe"], p_test["attacked"], p_test["safe"]), choice.threshold,
              f"{w.model.name}: unsafe {unsafe.tolist()}, attack {attack_name}")  # fmt: skip
    if json_path:
        write_json(
            json_path,
            base_report("threshold", w, seed)
            | {
                "unsafe_classes": unsafe.tolist(),
                "threshold": choice.threshold,
                "rule": "block iff unsafe probability >= threshold",
                "attack": {"name": attack, "eps": eps, "steps": steps, "restarts": restarts},
                "calibration": {"data": cal.name, **choice.__dict__},
                "test": {"data": test.name, "chosen": _rates_json(at_chosen), "default_0.5": _rates_json(at_half)},
            },
        )
