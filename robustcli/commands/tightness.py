"""`robust tightness`: how much IBP over-approximates the network's local linear map (Mao et al. 2023)."""

from __future__ import annotations

import math

import click
import torch

from robustcli.certify.bounders import walkable
from robustcli.certify.spec import margin_spec
from robustcli.certify.tightness import tightness
from robustcli.core.errors import InputError
from robustcli.options import RobustCommand, config_option, data_options, eps_option, json_option, model_options, runtime_options
from robustcli.progress import progress_bar
from robustcli.report import base_report, print_table, write_json
from robustcli.requests import check_at_least, check_eps
from robustcli.session import open_workload


@click.command("tightness", cls=RobustCommand)
@config_option
@model_options
@data_options
@eps_option("Linf budget for the radii (tau itself is eps-free).", default=0.1)
@runtime_options
@json_option
def command(model, arch, mean, std, allow_pickle, data, n, eps, device, batch_size, seed, json_path) -> None:  # fmt: skip
    """Tightness tau of interval bounds at the clean inputs (1 = IBP exact; small = loose).

    \b
    robust tightness --model mnist-cnn --eps 0.1
    """
    check_eps((eps,), "linf")
    check_at_least(1, batch_size=batch_size)
    w = open_workload(model, data, arch=arch, mean=mean, std=std, allow_pickle=allow_pickle, device=device, n=n)
    net = walkable(w.model.module, w.data.x[:2].to(w.device))  # the canonical layer tree the bound engines walk
    taus, exact, loose = [], [], []
    x, y = w.data.x, w.data.y
    with progress_bar("measuring tightness", len(x)) as advance:
        for s in range(0, len(x), batch_size):
            xb, yb = x[s : s + batch_size].to(w.device), y[s : s + batch_size].to(w.device)
            t = tightness(net, xb, margin_spec(yb, w.num_classes, xb.dtype), eps)
            taus.append(t.tau.cpu())
            exact.append(t.exact_radius.cpu())
            loose.append(t.ibp_radius.cpu())
            advance(len(xb))
    tau = torch.cat(taus)
    point_tau = tau.nanmean(1)
    defined = int((~torch.isnan(tau)).sum())
    summary = {
        "eps": eps,
        "tau_mean": tau.nanmean().item(),
        "tau_median": tau.nanmedian().item(),
        "tau_point_median": point_tau.nanmedian().item(),
        "exact_radius_mean": torch.cat(exact).mean().item(),
        "ibp_radius_mean": torch.cat(loose).mean().item(),
        "pairs": defined,
    }
    report = base_report("tightness", w, seed) | summary
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"  # noqa: E731
    print_table(
        f"IBP tightness of {report['model']} on {report['data']} (n={report['n']})",
        ["model", "tau mean", "tau median", "exact radius (eps)", "IBP radius (eps)", "(point, margin) pairs"],
        [[report["model"], fmt(summary["tau_mean"]), fmt(summary["tau_median"]), fmt(summary["exact_radius_mean"]),
          fmt(summary["ibp_radius_mean"]), str(defined)]],  # fmt: skip
        caption="Mao et al. 2023: tau = |prod W| eps / (prod |W| eps) on the local linearisation, per margin",
    )
    if json_path:
        write_json(json_path, report)
