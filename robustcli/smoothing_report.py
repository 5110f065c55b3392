"""`robust certify --method smoothing`: options, run, table, JSON and PNG for randomized smoothing.

The engine (`robustcli.certify.smoothing`) returns per-point certificates of the smoothed
classifier g; this module summarises them per sigma. Every accuracy here is g's: the base model's
accuracy is a different classifier's and is deliberately not shown next to it.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import click
import torch

from robustcli.attacks.evaluate import batch_generator
from robustcli.certify.smoothing import (
    ABSTAIN,
    SmoothingCertificate,
    certified_accuracy,
    certify_smoothed,
    empty_certificate,
    merge_certificates,
    predict_from_counts,
)
from robustcli.core import distributed
from robustcli.core.errors import InputError
from robustcli.core.nn import model_float_dtype
from robustcli.options import MultiOption
from robustcli.report import pct

from robustcli.requests import SmoothingRequest

DEFAULT_SAMPLES = SmoothingRequest.samples
DEFAULT_N0 = SmoothingRequest.n0
DEFAULT_ALPHA = SmoothingRequest.alpha

smoothing_options = [
    click.option("--sigma", cls=MultiOption, type=float,
                 help="Smoothing noise std in [0, 1] pixel units, one or more (with --method smoothing)."),
    click.option("--samples", type=int, default=DEFAULT_SAMPLES, show_default=True,
                 help="Smoothing: noise samples n per point for the bound (Cohen et al. use 100000)."),
    click.option("--n0", type=int, default=DEFAULT_N0, show_default=True,
                 help="Smoothing: noise samples that select the top class."),
    click.option("--alpha", type=float, default=DEFAULT_ALPHA, show_default=True,
                 help="Smoothing: failure probability of each certificate and prediction."),
    click.option("--png", "png_path", type=click.Path(dir_okay=False),
                 help="Smoothing: plot certified accuracy vs L2 radius here (PNG)."),
]  # fmt: skip


def add_smoothing_options(f: Callable) -> Callable:
    for option in reversed(smoothing_options):
        f = option(f)
    return f


def reject_smoothing_options() -> None:
    """Smoothing options without --method smoothing are a mistake worth one line, not silence."""
    ctx = click.get_current_context()
    for name in ("sigma", "samples", "n0", "alpha", "png_path"):
        source = ctx.get_parameter_source(name)
        if source == click.core.ParameterSource.COMMANDLINE:
            flag = "--png" if name == "png_path" else f"--{name}"
            raise InputError(f"{flag} goes with --method smoothing")


def check_combination(ctx: click.Context, methods: tuple[str, ...], png_path: str | None, spec: str | None) -> None:
    """What `--method smoothing` does not combine with; its own values are `SmoothingRequest`'s."""
    if set(methods) != {"smoothing"}:
        raise InputError("--method smoothing certifies a different classifier (the smoothed one); run it on its own")
    if spec is not None:
        raise InputError("--spec goes with bound methods (ibp, crown, ...), not with --method smoothing")
    if ctx.params.get("norm") == "linf" and ctx.get_parameter_source("norm") != click.core.ParameterSource.DEFAULT:
        raise InputError("randomized smoothing with Gaussian noise certifies L2 radii only; use --norm l2 or drop --norm")
    if png_path and not png_path.lower().endswith(".png"):
        raise InputError(f"--png {png_path}: use a file name ending in .png")


def summarise(
    cert: SmoothingCertificate, labels: torch.Tensor, radii: tuple[float, ...], n0: int, n: int, time_s: float
) -> dict[str, Any]:
    """One sigma's row: g's PREDICT accuracy and abstentions (on the n estimation samples),
    CERTIFY's certified accuracy per radius, the median certified radius, time, and per point."""
    labels = labels.cpu()
    pred = predict_from_counts(cert.counts, cert.alpha)
    correct = cert.prediction == labels
    radii_t = torch.tensor(radii, dtype=torch.float64)
    cert_acc = certified_accuracy(cert, labels, radii_t)
    good_radii = cert.radius[correct]
    points = len(labels)
    return {
        "classifier": "smoothed",
        "sigma": cert.sigma,
        "n0": n0,
        "samples": n,
        "alpha": cert.alpha,
        "clean_accuracy": float((pred.prediction == labels).double().mean()),
        "abstention_rate": float(pred.abstained.double().mean()),
        "certify_abstention_rate": float(cert.abstained.double().mean()),
        "certified_accuracy": [{"radius": r, "accuracy": float(a)} for r, a in zip(radii, cert_acc.tolist())],
        "median_certified_radius": float(good_radii.median()) if len(good_radii) else None,
        "time_s": time_s,
        "time_per_point_s": time_s / max(points, 1),
        "points": [
            {
                "label": int(labels[i]),
                "class": None if int(cert.prediction[i]) == ABSTAIN else int(cert.prediction[i]),
                "radius": float(cert.radius[i]),
                "p_lower": float(cert.p_lower[i]),
                "predict_class": None if int(pred.prediction[i]) == ABSTAIN else int(pred.prediction[i]),
                "counts": cert.counts[i].tolist(),
                "selection_counts": cert.selection_counts[i].tolist(),
            }
            for i in range(points)
        ],
    }


def radius_curve(row: dict, grid: torch.Tensor) -> torch.Tensor:
    """Certified accuracy of one sigma's smoothed classifier at every radius of `grid`."""
    radius = torch.tensor([p["radius"] if p["class"] == p["label"] else -1.0 for p in row["points"]], dtype=torch.float64)
    return (radius[None, :] >= grid[:, None]).double().mean(1)


def smoothing_table(report: dict) -> None:
    from robustcli.report import print_table

    radii = [c["radius"] for c in report["results"][0]["certified_accuracy"]]
    rows = []
    for r in report["results"]:
        median = r["median_certified_radius"]
        rows.append([
            f"{r['sigma']:g}", pct(r["clean_accuracy"]), pct(r["abstention_rate"]),
            *[pct(c["accuracy"]) for c in r["certified_accuracy"]],
            "-" if median is None else f"{median:.3f}", f"{r['time_s']:.2f}s",
        ])  # fmt: skip
    columns = ["sigma", "clean (g)", "abstain", *[f"r={x:g}" for x in radii], "median r", "time"]
    print_table(
        f"Randomized smoothing of {report['model']} on {report['data']} (n={report['n']}; "
        f"{report['samples']} samples, n0={report['n0']}, alpha={report['alpha']:g})",
        columns,
        rows,
        caption="All numbers are for the SMOOTHED classifier g(x) = argmax_c P(f(x+e)=c), a different "
        "classifier from the base model. clean / abstain: PREDICT; r=: certified accuracy at L2 radius r "
        "(CERTIFY, each certificate holds with prob. >= 1 - alpha); median r: over correctly certified points",
    )


def smoothing_png(path: str, report: dict) -> None:
    """Certified accuracy against L2 radius, one step curve per sigma (Cohen et al. 2019, Fig. 6 style)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from robustcli.core.files import atomic_path

    top = max(max((p["radius"] for p in r["points"]), default=0.0) for r in report["results"])
    grid = torch.linspace(0, max(top * 1.05, 1e-3), 400, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for r in report["results"]:
        ax.plot(grid.numpy(), radius_curve(r, grid).numpy(), label=f"sigma = {r['sigma']:g}")
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("certified accuracy (smoothed classifier)")
    ax.set_ylim(0, 1)
    ax.set_title(
        f"{report['model']} on {report['data']} ({report['n']} points): "
        f"{report['samples']} noise samples, alpha={report['alpha']:g}",
        fontsize=10,
    )
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def certify_blocks(
    workload, part: slice, sigma: float, *, samples: int, n0: int, alpha: float, batch_size: int, seed: int,
    advance: Callable[[int], None] | None = None,
) -> SmoothingCertificate:  # fmt: skip
    """CERTIFY the points of `part` in blocks of as many points as one batch holds (at least one).

    Each block draws from its own generator, seeded by the seed and the block's first index, so a
    point's noise does not depend on how the points are split across torchrun ranks.
    """
    w = workload
    block = max(1, batch_size // samples)
    certs = []
    for start in range(part.start, part.stop, block):
        stop = min(start + block, part.stop)
        certs.append(certify_smoothed(
            w.model.module, w.data.x[start:stop], sigma, n=samples, n0=n0, alpha=alpha, num_classes=w.num_classes,
            generator=batch_generator(seed, start, w.device), batch_size=batch_size, on_batch=advance,
        ))  # fmt: skip
    return merge_certificates(certs) if certs else empty_certificate(w.num_classes, sigma, alpha)


def run_smoothing_certify(
    workload, radii: tuple[float, ...], sigma: tuple[float, ...], *, samples: int, n0: int, alpha: float,
    batch_size: int, seed: int, advance: Callable[[int], None] | None = None, sharded: bool = False,
) -> list[dict[str, Any]] | None:  # fmt: skip
    """CERTIFY every point of the workload at each sigma; one summary per sigma.

    `sharded`: under torchrun each rank certifies its share of the points and rank 0 gets the
    summaries (other ranks get None); otherwise every process certifies all points.
    """
    w = workload
    part = distributed.shard(len(w.data), max(1, batch_size // samples)) if sharded else slice(0, len(w.data))
    results = []
    for s in sigma:
        t0 = time.perf_counter()
        local = certify_blocks(w, part, s, samples=samples, n0=n0, alpha=alpha, batch_size=batch_size, seed=seed,
                               advance=advance)  # fmt: skip
        cert = distributed.gather_to_main(local, merge_certificates) if sharded else local
        if cert is not None:
            results.append(summarise(cert, w.data.y, radii, n0, samples, time.perf_counter() - t0))
    return None if sharded and not distributed.is_main() else results


def certify_smoothing_command(
    *, model, arch, mean, std, allow_pickle, data, n, eps, methods, spec, sigma, samples,
    n0, alpha, png_path, device, batch_size, seed, json_path,
) -> None:  # fmt: skip
    from robustcli.progress import progress_bar
    from robustcli.report import base_report, write_json
    from robustcli.session import open_workload

    check_combination(click.get_current_context(), methods, png_path, spec)
    request = SmoothingRequest(
        sigma=tuple(sigma), eps=tuple(eps), samples=samples, n0=n0, alpha=alpha, batch_size=batch_size, seed=seed
    )
    radii, sigma = request.radii, request.sigma
    with distributed.main_first():  # rank 0 fills the model/data cache before the other ranks read it
        w = open_workload(model, data, arch=arch, mean=mean, std=std, allow_pickle=allow_pickle, device=device, n=n)
    part = distributed.shard(len(w.data), max(1, batch_size // samples))
    total = (part.stop - part.start) * (n0 + samples) * len(sigma)
    with progress_bar("smoothing: noise samples", total) as advance:
        results = run_smoothing_certify(
            w, radii, tuple(sigma), samples=samples, n0=n0, alpha=alpha, batch_size=batch_size, seed=seed,
            advance=lambda k: advance(k), sharded=True,
        )  # fmt: skip
    if results is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    report = base_report("certify", w, seed) | {
        "method": "smoothing",
        "model_dtype": str(model_float_dtype(w.model.module)).removeprefix("torch."),
        "norm": "l2",
        "classifier": "smoothed (Cohen et al. 2019); not the base model",
        "samples": samples,
        "n0": n0,
        "alpha": alpha,
        "radii": list(radii),
        "results": results,
    }
    smoothing_table(report)
    if json_path:
        write_json(json_path, report)
    if png_path:
        smoothing_png(png_path, report)
