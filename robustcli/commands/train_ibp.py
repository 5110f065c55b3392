"""`robust train-ibp`: certified training with interval bounds (Shi et al. 2021's short warmup), resumable."""

from __future__ import annotations

import time

import click
import torch
from torch import nn

from robustcli.commands import _training
from robustcli.core import distributed
from robustcli.core.checkpoint import Checkpointer
from robustcli.core.ddp import has_batchnorm
from robustcli.core.device import resolve_device
from robustcli.core.errors import InputError
from robustcli.data import Dataset
from robustcli.models import save_model
from robustcli.options import MultiOption, RobustCommand, config_option, data_option, device_option, eps_option, json_option, points_option, seed_option, train_points_option
from robustcli.progress import progress_bar
from robustcli.report import pct, print_table, write_json
from robustcli.attacks.evaluate import Evaluation
from robustcli.html_report import html_option
from robustcli.image_grid import broken_sample
from robustcli.training_report import settings, write_training_html
from robustcli.training_requests import IBPTrainRequest


def build_model(arch: str, data: str, mean: tuple[float, ...], std: tuple[float, ...], init: str, seed: int) -> nn.Module:
    """The architecture with its normalisation, initialised reproducibly from `seed`, leaving
    torch's global generator as it was."""
    with torch.random.fork_rng(devices=[]):
        return _training.build_model(arch, data, seed, init=init, mean=mean, std=std)


def split_holdout(train: Dataset, holdout: int, n_train: int | None, seed: int) -> tuple[Dataset, Dataset]:
    """A fixed random held-out batch (for per-epoch monitoring) and the rest for training."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 7919))
    hold, rest = order[:holdout], order[holdout:]
    if n_train is not None:
        rest = rest[:n_train]
    return Dataset(train.x[rest], train.y[rest], train.name), Dataset(train.x[hold], train.y[hold], train.name + ":holdout")


def final_evaluation(
    model: nn.Module, test: Dataset, eps: float, norm: str, pgd_steps: int, seed: int, device, *, keep_adversarials: bool = False
) -> tuple[dict, Evaluation]:
    """Clean, PGD and IBP-verified accuracy on the test split (eval mode), and PGD's evaluation
    (with its adversarial examples when `keep_adversarials`, for the HTML page's images)."""
    from robustcli.attacks.evaluate import evaluate
    from robustcli.attacks.registry import make_attack
    from robustcli.certify.training import ibp_verified_accuracy

    model.eval()
    clean, verified = ibp_verified_accuracy(model, test.x, test.y, eps, norm)
    attack = make_attack("pgd" if norm == "linf" else "pgd-l2", steps=pgd_steps)
    t0 = time.perf_counter()
    ev = evaluate(
        model, test.x, test.y, [(attack, [eps])], device=device, batch_size=500, seed=seed,
        keep_adversarials=keep_adversarials,
    )  # fmt: skip
    return {
        "clean_accuracy": clean,
        "pgd_accuracy": ev.outcomes[0].robust_accuracy,
        "ibp_verified_accuracy": verified,
        "pgd_steps": pgd_steps,
        "pgd_time_s": time.perf_counter() - t0,
        "n": len(test),
    }, ev


@click.command("train-ibp", cls=RobustCommand)
@config_option
@data_option(IBPTrainRequest.data, help="mnist, digits, or a training file (.npz/.pt/...).")
@click.option("--test-data", default=None, help="Test file for the final evaluation (required with a --data file).")
@click.option("--arch", default=None, help="Built-in arch or file.py:factory (default mnist-cnn-bn / digits-mlp-bn).")
@click.option("--mean", cls=MultiOption, type=float, help="Per-channel mean (default: the bundled dataset's).")
@click.option("--std", cls=MultiOption, type=float, help="Per-channel std (default: the bundled dataset's).")
@eps_option("Target perturbation budget eps_max.", required=True)
@click.option("--norm", type=click.Choice(["linf", "l2"]), default=IBPTrainRequest.norm, show_default=True)
@click.option("--epochs", type=int, default=IBPTrainRequest.epochs, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Trained model (.safetensors).")
@click.option("--recipe", type=click.Choice(["short", "vanilla"]), default=IBPTrainRequest.recipe, show_default=True,
              help="short: Shi et al. 2021 (IBP init, BN, regularisers, short ramp); vanilla: default init, long ramp.")  # fmt: skip
@click.option("--method", type=click.Choice(["ibp", "crown-ibp"]), default=IBPTrainRequest.method, show_default=True,
              help="Bound in the loss; crown-ibp needs auto_LiRPA.")  # fmt: skip
@click.option("--init", "init", type=click.Choice(["ibp", "default"]), default=None, help="Weight init (recipe default).")
@click.option("--start-epochs", "--start", "start", type=int, default=None, help="Epochs at eps 0 before the ramp (recipe default 1).")
@click.option("--warmup", type=int, default=None, help="Epochs of eps ramp (short: 2/7, vanilla: 1/2 of --epochs).")
@click.option("--lr", type=float, default=IBPTrainRequest.lr, show_default=True)
@click.option("--lr-decay", type=float, default=IBPTrainRequest.lr_decay, show_default=True, help="lr factor at each milestone.")
@click.option("--lr-milestones", cls=MultiOption, type=int, help="Epochs (0-based) where lr decays (default 5/7, 6/7 of --epochs).")  # fmt: skip
@click.option("--grad-clip", type=float, default=IBPTrainRequest.grad_clip, show_default=True, help="Max gradient norm (0: off).")
@click.option("--reg/--no-reg", "regularize", default=None, help="Warmup regularisers (short: on, vanilla: off).")
@click.option("--reg-lambda", type=float, default=IBPTrainRequest.reg_lambda, show_default=True)
@click.option("--tau", type=float, default=IBPTrainRequest.tau, show_default=True)
@click.option("--kappa", type=float, default=IBPTrainRequest.kappa, show_default=True,
              help="Share of natural CE in the loss once eps > 0 (0: the robust loss alone, as Shi et al.).")
@click.option("--mix-natural/--no-mix-natural", default=IBPTrainRequest.mix_natural, show_default=True,
              help="Ramp natural CE's share from 1 down to --kappa as eps grows (Gowal et al. 2018), off in Shi et al.")
@click.option("--batch-size", type=int, default=IBPTrainRequest.batch_size, show_default=True)
@click.option("--holdout", type=int, default=IBPTrainRequest.holdout, show_default=True,
              help="Training points held out for per-epoch monitoring (at most a fifth of the split).")  # fmt: skip
@train_points_option()
@points_option(help="Evaluate on the first n test points (default all).")
@click.option("--pgd-steps", type=int, default=IBPTrainRequest.pgd_steps, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the checkpoint beside --out.")
@device_option
@seed_option
@json_option
@html_option
@click.pass_context
def command(
    ctx, data, test_data, arch, mean, std, eps, norm, epochs, out, recipe, method, init, start, warmup, lr,
    lr_decay, lr_milestones, grad_clip, regularize, reg_lambda, tau, kappa, mix_natural, batch_size, holdout, n_train, n,
    pgd_steps, resume, device, seed, json_path, html_path,
) -> None:  # fmt: skip
    """Train a certifiably robust model with interval bound propagation (IBP).

    \b
    robust train-ibp --data mnist --eps 0.1 --epochs 30 --out mnist-ibp.safetensors
    robust train-ibp --config configs/train-ibp-mnist.yaml
    robust train-ibp ... --resume          # after Ctrl-C or a crash
    robust certify --model mnist-ibp.safetensors --eps 0.1
    """
    request = IBPTrainRequest(
        data=data, test_data=test_data, arch=arch, mean=tuple(mean), std=tuple(std), eps=eps, norm=norm, epochs=epochs,
        out=out, recipe=recipe, method=method, init=init, start=start, warmup=warmup, lr=lr, lr_decay=lr_decay,
        lr_milestones=tuple(lr_milestones), grad_clip=grad_clip, regularize=regularize, reg_lambda=reg_lambda, tau=tau,
        kappa=kappa, mix_natural=mix_natural, batch_size=batch_size, holdout=holdout, n_train=n_train, num_points=n,
        pgd_steps=pgd_steps, resume=resume, seed=seed, html=html_path,
    )  # fmt: skip
    request.check_dependencies()
    run(ctx, request, device, json_path)


def run(ctx: click.Context, request: IBPTrainRequest, device: str | None, json_path: str | None) -> None:
    """Train with interval bounds (resumable), evaluate clean / PGD / IBP-verified, and report."""
    from robustcli.certify.training import train_ibp

    r = request
    data, arch, eps, norm, epochs, recipe, method, seed, out = (
        r.data, r.architecture, r.eps, r.norm, r.epochs, r.recipe, r.method, r.seed, r.out
    )  # fmt: skip
    pgd_steps, html_path = r.pgd_steps, r.html
    dev = resolve_device(device)
    config = r.config()
    train_all, test = _training.train_test_data(data, r.test_data)
    test = test.head(r.num_points)
    holdout = min(r.holdout, len(train_all) // 5)
    train, held = split_holdout(train_all, holdout, r.n_train, seed)
    if len(train) < 2:
        raise InputError(f"only {len(train)} training points left after the hold-out; lower --holdout or add data")
    model = build_model(arch, data, r.mean, r.std, config.init, seed).to(dev)
    if recipe == "short" and not has_batchnorm(model):
        raise InputError(
            f"the short recipe expects BatchNorm after each layer (Shi et al. 2021) but {arch} has none; "
            "use a -bn arch (mnist-cnn-bn, mnist-cnn7-bn, mnist-mlp-bn, digits-mlp-bn) or --recipe vanilla"
        )
    from robustcli.session import check_model_on_data

    classes = check_model_on_data(model, train, dev)
    if classes < 2:
        raise InputError("the model has a single output; certified training needs at least 2 classes")
    crown = None
    if method == "crown-ibp":
        from robustcli.certify.crown_ibp_training import crown_ibp_lower_bound_fn

        crown = crown_ibp_lower_bound_fn(model, train.x[:2].to(dev))

    ckpt = Checkpointer(out)
    done = {"epochs": 0}
    with progress_bar(f"train-ibp {arch} eps={eps:g}", epochs) as advance:

        def on_epoch(s) -> None:
            step = s.epoch + 1 - done["epochs"]
            done["epochs"] = s.epoch + 1
            advance(
                step, loss=s.loss, clean=pct(s.holdout_accuracy), verified=pct(s.holdout_verified), eps=f"{s.eps:.4g}"
            )

        def on_resume(changed: dict) -> None:
            if changed:
                what = ", ".join(f"{k} {a} -> {b}" for k, a, b in ((k, *v) for k, v in changed.items()))
                click.echo(f"note: resuming with changed options ({what})", err=True)

        try:
            result = train_ibp(
                model, train.x, train.y, config, holdout=(held.x, held.y), checkpointer=ckpt, resume=r.resume,
                crown_ibp_bounds=crown, on_epoch=on_epoch, on_resume=on_resume,
            )  # fmt: skip
        except KeyboardInterrupt:
            kept = (
                f"the checkpoint of epoch {done['epochs']} is kept at {ckpt.checkpoint_path}"
                if ckpt.checkpoint_path.exists()
                else "no epoch had completed, so there is no checkpoint"
            )
            click.echo(f"\ninterrupted; {kept}; run the same command with --resume to continue", err=True)
            ctx.exit(130)
            return
    if not distributed.is_main():  # under torchrun rank 0 saves, evaluates and reports
        return
    save_model(
        model, out, arch,
        extra={"trained_on": f"{data}:train", "seed": seed, "eps": eps, "norm": norm, "recipe": recipe, "method": method},
    )  # fmt: skip
    final, pgd_run = final_evaluation(model, test, eps, norm, pgd_steps, seed, dev, keep_adversarials=bool(html_path))
    report = {
        "command": "train-ibp",
        "model": str(out),
        "arch": arch,
        "data": data,
        "test": test.name,
        "recipe": recipe,
        "config": config.as_dict(),
        "n_train": len(train),
        "n_holdout": len(held),
        "resumed_from_epoch": result.resumed_from,
        "steps_per_epoch": result.steps_per_epoch,
        "train_time_s": sum(s.time_s for s in result.history),
        "final": final,
        "checkpoint": str(ckpt.checkpoint_path),
        "log": str(ckpt.log_path),
        "history": [s.as_dict() for s in result.history],
        "device": str(dev),
    }
    rows = [
        ["clean accuracy", pct(final["clean_accuracy"])],
        [f"PGD-{pgd_steps} accuracy ({norm}, eps {eps:g})", pct(final["pgd_accuracy"])],
        [f"IBP-verified accuracy ({norm}, eps {eps:g})", pct(final["ibp_verified_accuracy"])],
        ["model", str(out)],
        ["training log", str(ckpt.log_path)],
        ["checkpoint", str(ckpt.checkpoint_path)],
    ]
    title = f"train-ibp {arch} on {data} ({recipe} recipe, {method}), test n={final['n']}"
    caption = f"{epochs} epochs, {report['train_time_s']:.1f}s training this run"
    print_table(title, ["", "value"], rows, caption=caption)
    if html_path:
        sample = broken_sample(pgd_run, model, test.x, test.y, device=dev)
        write_training_html(
            html_path, title=f"robust {title}", columns=["", "value"], rows=rows, caption=caption,
            meta=[("model", str(out)), ("arch", arch), ("data", data), ("test data", test.name),
                  ("config", settings(config.as_dict())), ("device", str(dev))],
            histories={"train-ibp": report["history"]},
            samples=[(f"Points the final PGD-{pgd_steps} check broke ({norm}, eps {eps:g})", sample,
                      f"all {final['n']} test points")],
        )  # fmt: skip
    if json_path:
        write_json(json_path, report)

