"""`robust train-moe`: a mixture-of-experts CNN trained naturally, with AT, or with AdvMoE,
compared with the dense CNN of the same width trained with AT for the same epochs."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from robustcli.defenses.adversarial import train_adversarial
from robustcli.defenses.advmoe import MODES, train_moe
from robustcli.attacks.pgd import PGDLinf
from robustcli.defenses.evaluation import clean_and_pgd_accuracy
from robustcli.defenses.moe import DENSE_TWIN, arch_name, macs_per_input
from robustcli.archs import build_arch
from robustcli.core.nn import Normalized
from robustcli.core import distributed
from robustcli.core.checkpoint import Checkpointer
from robustcli.commands._training import apply_options, epoch_progress, train_test_data, training_options
from robustcli.core.device import resolve_device
from robustcli.models import save_model
from robustcli.options import MultiOption, RobustCommand, config_option, eps_option, json_option, points_option
from robustcli.progress import progress_bar
from robustcli.report import pct, print_table, write_json
from robustcli.html_report import html_option
from robustcli.training_report import FINAL_CHECK_BATCH, first_batch_sample, write_training_html
from robustcli.training_requests import MoETrainRequest
from robustcli.zoo import NORMALIZATION


def output_path(out: Path, name: str, several: bool) -> Path:
    """--out itself for a single model; OUT.<name>.safetensors beside it when training several."""
    return out.with_name(f"{out.stem}.{name}{out.suffix}") if several else out


@click.command("train-moe", cls=RobustCommand)
@config_option
@apply_options(training_options)
@click.option("--mode", "mode", cls=MultiOption, type=click.Choice(MODES), help="One or more of advmoe, at, natural (default advmoe at).")
@click.option("--experts", type=int, default=MoETrainRequest.experts, show_default=True, help="Experts (channel groups) per MoE layer.")
@click.option("--top-k", type=int, default=MoETrainRequest.top_k, show_default=True, help="Experts each input uses per MoE layer.")
@eps_option("Linf budget for training and the PGD check.", default=MoETrainRequest.eps)
@click.option("--attack-steps", type=int, default=MoETrainRequest.attack_steps, show_default=True, help="PGD steps in training (AdvMoE's default 2).")
@click.option("--beta", type=float, default=MoETrainRequest.beta, show_default=True, help="AdvMoE weight of the model KL term.")
@click.option("--alpha", type=float, default=MoETrainRequest.alpha, show_default=True, help="AdvMoE weight of the router KL term.")
@click.option("--warmup", type=int, default=None,
              help="Epochs over which eps ramps up from 0 (default 2, at most --epochs minus 1).")
@click.option("--dense/--no-dense", default=MoETrainRequest.dense, show_default=True, help="Also train the dense CNN of the same width with AT.")
@click.option("--eval-steps", type=int, default=MoETrainRequest.eval_steps, show_default=True, help="PGD steps of the final check.")
@points_option(help="Check on the first n test points (default all).", old=("--eval-n",), name="eval_n")
@json_option
@html_option
def command(
    data, test_data, train_n, epochs, lr, batch_size, out, resume, device, seed, mode, experts, top_k, eps,
    attack_steps, beta, alpha, warmup, dense, eval_steps, eval_n, json_path, html_path,
) -> None:  # fmt: skip
    """Train a sparse MoE-CNN (AdvMoE, Zhang et al. 2023) and compare it with a dense AT CNN.

    \b
    robust train-moe --data mnist --mode advmoe at --experts 4 --top-k 2 --eps 0.3 --out moe.safetensors
    """
    request = MoETrainRequest(
        data=data, test_data=test_data, n_train=train_n, epochs=epochs, lr=lr, batch_size=batch_size, out=out,
        resume=resume, seed=seed, html=html_path, mode=tuple(mode), experts=experts, top_k=top_k, eps=eps,
        attack_steps=attack_steps, beta=beta, alpha=alpha, warmup=warmup, dense=dense, eval_steps=eval_steps,
        num_points=eval_n,
    )  # fmt: skip
    run(request, device, json_path)


def run(request: MoETrainRequest, device: str | None, json_path: str | None) -> None:
    """Train each model of the plan, check it with PGD, count its MACs, and report."""
    r = request
    family, experts, top_k, eps, epochs, seed, eval_steps = r.family, r.experts, r.top_k, r.eps, r.epochs, r.seed, r.eval_steps
    path = r.out_path
    html_path = r.html if distributed.is_main() else None  # under torchrun rank 0 writes the page
    dev = resolve_device(device)
    train, test = train_test_data(r.data, r.test_data, r.n_train)
    test = test.head(r.num_points)
    moe_arch = arch_name(family, experts, top_k)
    plan = [(m, moe_arch) for m in r.modes] + ([("dense-at", DENSE_TWIN[family])] if r.dense else [])
    several = len(plan) > 1
    rows, results, samples = [], [], []
    dense_macs = None
    for name, arch in plan:
        torch.manual_seed(seed)
        model = Normalized(build_arch(arch), *NORMALIZATION[family]).to(dev)
        target = output_path(path, name, several)
        ckpt = Checkpointer(target)
        resume_here = r.resume and ckpt.checkpoint_path.exists() or (r.resume and not several)
        cfg = r.config(name)
        trainer = train_adversarial if name == "dense-at" else train_moe
        with epoch_progress(f"training {name}", epochs, len(train), r.batch_size) as on_batch:
            history = trainer(model, train.x, train.y, cfg, checkpointer=ckpt, resume=resume_here, on_batch=on_batch)
        with progress_bar(f"PGD check {name}", len(test)) as advance:
            check = clean_and_pgd_accuracy(model, test.x, test.y, eps, steps=eval_steps, seed=seed, on_batch=advance)
        if html_path:
            sample, searched = first_batch_sample(
                model, test.x, test.y, [(PGDLinf(steps=eval_steps, restarts=1), [eps])], batch_size=FINAL_CHECK_BATCH,
                seed=seed, device=dev,
            )  # fmt: skip
            samples.append((f"Points the final PGD-{eval_steps} check broke: {name} (eps {eps:g})", sample, searched))
        macs = macs_per_input(model, test.x[:500])
        if name == "dense-at":
            dense_macs = macs
        save_model(model, target, arch, extra={"trained_on": train.name, "defense": f"moe-{name}" if name != "dense-at" else "pgd-at",
                                               "eps": eps, "epochs": epochs, "seed": seed})  # fmt: skip
        results.append({"model": name, "arch": arch, "out": str(target), "clean_accuracy": check.clean_accuracy,
                        "pgd_accuracy": check.pgd_accuracy, "macs_per_input": macs, "config": cfg.__dict__,
                        "history": history})  # fmt: skip
    if dense_macs is None:  # the dense twin's cost without training it
        dense_macs = macs_per_input(build_arch(DENSE_TWIN[family]).to(dev), test.x[:500])
    for result in results:
        result["macs_ratio_vs_dense"] = result["macs_per_input"] / dense_macs
        label = f"MoE {result['model']} (E={experts}, k={top_k})" if result["model"] != "dense-at" else f"dense {result['arch']} AT"
        rows.append([label, pct(result["clean_accuracy"]), pct(result["pgd_accuracy"]), f"{result['macs_per_input'] / 1e3:.0f}k",
                     f"{result['macs_ratio_vs_dense']:.2f}"])  # fmt: skip
    title = f"MoE-CNN vs dense CNN on {train.name}, {epochs} epochs, eps {eps:g} (test: {test.name}, n={len(test)})"
    columns = ["model", "clean acc", f"PGD-{eval_steps} acc", "MACs/input", "vs dense"]
    caption = "MACs actually computed at inference (skipped experts excluded, routers included)."
    print_table(title, columns, rows, caption=caption)
    if html_path:
        write_training_html(
            html_path, title=f"robust train-moe: {title}", columns=columns, rows=rows, caption=caption,
            meta=[("models", ", ".join(result["out"] for result in results)), ("data", train.name), ("test data", test.name),
                  ("experts", experts), ("top-k", top_k), ("seed", seed), ("device", str(dev))],
            histories={result["model"]: result["history"] for result in results}, samples=samples,
        )  # fmt: skip
    if json_path:
        write_json(json_path, {"command": "train-moe", "data": train.name, "test_data": test.name, "device": str(dev),
                               "experts": experts, "top_k": top_k, "eps": eps, "epochs": epochs,
                               "pgd": {"steps": eval_steps, "restarts": 1}, "models": results,
                               "dense_macs_per_input": dense_macs})  # fmt: skip
