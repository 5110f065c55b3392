"""`robust tightness`: how much IBP over-approximates the network's local linear map (Mao et al. 2023)."""

from __future__ import annotations

import math

import click
import torch

from robustcli.certify.bounders import walkable
from robustcli.certify.graph import model_steps
from robustcli.certify.spec import margin_spec
from robustcli.certify.tightness import at_initialisation, tightness
from robustcli.core.errors import InputError
from robustcli.options import RobustCommand, config_option, data_options, eps_option, json_option, model_options, runtime_options
from robustcli.progress import progress_bar
from robustcli.report import base_report, print_table, write_json
from robustcli.requests import TightnessRequest
from robustcli.session import open_workload


@click.command("tightness", cls=RobustCommand)
@config_option
@model_options
@data_options
@eps_option("Linf budget for the radii (tau itself is eps-free).", default=TightnessRequest.eps)
@click.option("--at-init/--no-at-init", default=TightnessRequest.at_init, show_default=True,
              help="Also measure the same architecture freshly initialised (seeded by --seed), as Mao et al. report tau.")  # fmt: skip
@runtime_options
@json_option
def command(model, arch, mean, std, allow_pickle, data, n, eps, at_init, device, batch_size, seed, json_path) -> None:  # fmt: skip
    """Tightness tau of interval bounds at the clean inputs (1 = IBP exact; small = loose).

    Mao et al. 2023 publish tau at initialisation; --at-init adds that row for this architecture,
    on the same points, so a trained model's tau can be compared with it like for like.

    \b
    robust tightness --model mnist-cnn --eps 0.1
    robust tightness --model mnist-cnn --at-init --seed 0
    """
    request = TightnessRequest(eps=eps, at_init=at_init, batch_size=batch_size, seed=seed)
    eps, batch_size = request.eps, request.batch_size
    w = open_workload(model, data, arch=arch, mean=mean, std=std, allow_pickle=allow_pickle, device=device, n=n)
    example = w.data.x[:2].to(w.device)
    net = walkable(w.model.module, example)  # the canonical layer tree the bound engines walk
    model_steps(net, "tightness")  # a layer the metric cannot read is refused, named, before any work
    summary = {"eps": eps} | _measure(w, net, eps, batch_size, "measuring tightness")
    report = base_report("tightness", w, seed) | summary
    rows = [[report["model"], *_cells(summary)]]
    if at_init:
        try:
            fresh = at_initialisation(w.model.module, seed)
        except (ValueError, RuntimeError) as e:
            raise InputError(f"--at-init: cannot re-initialise {report['model']}: {e}") from None
        report["at_init"] = {"seed": seed} | _measure(w, walkable(fresh, example), eps, batch_size, "measuring tightness at init")
        rows.append([f"{report['model']} at init (seed {seed})", *_cells(report["at_init"])])
    print_table(
        f"IBP tightness of {report['model']} on {report['data']} (n={report['n']})",
        ["model", "tau mean", "tau median", "exact radius", "IBP radius", "pairs"],
        rows,
        caption="Mao et al. 2023: tau = |prod W| eps / (prod |W| eps) on the local linearisation, per margin; "
        f"radii: mean Linf radius of the margins at eps {eps}, exact vs IBP; pairs: (point, margin) pairs"
        + ("; 'at init': same architecture, PyTorch default init" if at_init else ""),
    )
    if json_path:
        write_json(json_path, report)


def _measure(w, module: torch.nn.Module, eps: float, batch_size: int, label: str) -> dict:
    """tau and radii over the workload's points for one network."""
    taus, exact, loose = [], [], []
    x, y = w.data.x, w.data.y
    with progress_bar(label, len(x)) as advance:
        for s in range(0, len(x), batch_size):
            xb, yb = x[s : s + batch_size].to(w.device), y[s : s + batch_size].to(w.device)
            t = tightness(module, xb, margin_spec(yb, w.num_classes, xb.dtype), eps)
            taus.append(t.tau.cpu())
            exact.append(t.exact_radius.cpu())
            loose.append(t.ibp_radius.cpu())
            advance(len(xb))
    tau = torch.cat(taus)
    return {
        "tau_mean": tau.nanmean().item(),
        "tau_median": tau.nanmedian().item(),
        "tau_point_median": tau.nanmean(1).nanmedian().item(),
        "exact_radius_mean": torch.cat(exact).mean().item(),
        "ibp_radius_mean": torch.cat(loose).mean().item(),
        "pairs": int((~torch.isnan(tau)).sum()),
    }


def _cells(summary: dict) -> list[str]:
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"  # noqa: E731
    keys = ("tau_mean", "tau_median", "exact_radius_mean", "ibp_radius_mean")
    return [fmt(summary[k]) for k in keys] + [str(summary["pairs"])]
