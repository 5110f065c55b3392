"""`robust train`: natural, PGD adversarial or TRADES training of a built-in architecture."""

from __future__ import annotations

import click

from robustcli.defenses.adversarial import DEFENSES, train_adversarial
from robustcli.attacks.pgd import PGDLinf
from robustcli.defenses.evaluation import clean_and_pgd_accuracy
from robustcli.core import distributed
from robustcli.core.checkpoint import Checkpointer
from robustcli.commands._training import apply_options, epoch_progress, new_model, train_test_data, training_options
from robustcli.core.device import resolve_device
from robustcli.models import save_model
from robustcli.options import RobustCommand, SelfCheckedFloat, config_option, eps_option, json_option, points_option
from robustcli.progress import progress_bar
from robustcli.report import pct, print_table, write_json
from robustcli.html_report import html_option
from robustcli.training_report import FINAL_CHECK_BATCH, first_batch_sample, settings, write_training_html
from robustcli.training_requests import AdversarialTrainRequest


@click.command("train", cls=RobustCommand)
@config_option
@apply_options(training_options)
@click.option("--defense", type=click.Choice(DEFENSES), default=AdversarialTrainRequest.defense, show_default=True)
@click.option("--arch", default=None, help="Built-in architecture (default mnist-cnn / digits-cnn) or package.module:factory.")
@eps_option("Linf budget for training and the PGD check.", default=AdversarialTrainRequest.eps)
@click.option("--attack-steps", type=int, default=AdversarialTrainRequest.attack_steps, show_default=True, help="PGD steps of the inner maximisation.")
@click.option("--beta", type=float, default=AdversarialTrainRequest.beta, show_default=True, help="TRADES weight of the KL term.")
@click.option("--warmup", type=int, default=None,
              help="Epochs over which eps ramps up from 0 (default 2, at most --epochs minus 1).")
@click.option("--sigma", cls=SelfCheckedFloat, type=float, default=AdversarialTrainRequest.sigma, show_default=True,
              help="--defense gaussian: std of the Gaussian noise added to [0, 1] pixels (Cohen et al. 2019).")
@click.option("--eval-steps", type=int, default=AdversarialTrainRequest.eval_steps, show_default=True, help="PGD steps of the final check.")
@points_option(help="Check on the first n test points (default all).", old=("--eval-n",), name="eval_n")
@json_option
@html_option
def command(
    data, test_data, train_n, epochs, lr, batch_size, out, resume, device, seed, defense, arch, eps, attack_steps, beta,
    warmup, sigma, eval_steps, eval_n, json_path, html_path,
) -> None:  # fmt: skip
    """Train a model to resist Linf attacks and report its clean and PGD accuracy.

    \b
    robust train --data mnist --defense pgd-at --eps 0.3 --epochs 10 --out at.safetensors
    robust train --data mnist --defense trades --beta 6 --out trades.safetensors --json trades.json
    robust train --data mnist --defense gaussian --sigma 0.25 --out smooth.safetensors
    """
    request = AdversarialTrainRequest(
        data=data, test_data=test_data, n_train=train_n, epochs=epochs, lr=lr, batch_size=batch_size, out=out,
        resume=resume, seed=seed, html=html_path, defense=defense, arch=arch, eps=eps, attack_steps=attack_steps,
        beta=beta, warmup=warmup, sigma=sigma, eval_steps=eval_steps, num_points=eval_n,
    )  # fmt: skip
    run(request, device, json_path)


def run(request: AdversarialTrainRequest, device: str | None, json_path: str | None) -> None:
    """Train, check with PGD, save, and report (table, JSON, HTML)."""
    r = request
    path, eps, eval_steps, seed, defense = r.out_path, r.eps, r.eval_steps, r.seed, r.defense
    html_path = r.html if distributed.is_main() else None  # under torchrun rank 0 writes the page
    dev = resolve_device(device)
    train, test = train_test_data(r.data, r.test_data, r.n_train)
    test = test.head(r.num_points)
    model, arch_name = new_model(r.arch, r.data, train, dev, seed)
    config = r.config()
    checkpointer = Checkpointer(path)
    with epoch_progress(f"training ({defense})", r.epochs, len(train), r.batch_size) as on_batch:
        history = train_adversarial(
            model, train.x, train.y, config, checkpointer=checkpointer, resume=r.resume, on_batch=on_batch
        )
    with progress_bar("PGD check", len(test)) as advance:
        check = clean_and_pgd_accuracy(model, test.x, test.y, eps, steps=eval_steps, seed=seed, on_batch=advance)
    save_model(
        model, path, arch_name,
        extra={"trained_on": train.name, "defense": defense, "eps": eps, "epochs": r.epochs, "seed": seed}
        | ({"sigma": r.sigma} if defense == "gaussian" else {}),
    )  # fmt: skip
    title = f"{defense} training of {arch_name} on {train.name} ({r.epochs} epochs, eps {eps:g})"
    columns = ["model", "test data", "clean acc", f"PGD-{eval_steps} acc (eps {eps:g})"]
    rows = [[str(path), f"{test.name} (n={len(test)})", pct(check.clean_accuracy), pct(check.pgd_accuracy)]]
    caption = "PGD accuracy is an upper bound on robust accuracy; run the strong suite for a verdict." + (
        f" Gaussian augmentation targets L2 certificates of the smoothed classifier: "
        f"robust certify --model {path} --method smoothing --sigma {r.sigma:g}"
        if defense == "gaussian"
        else ""
    )
    print_table(title, columns, rows, caption=caption)
    if html_path:
        sample, searched = first_batch_sample(
            model, test.x, test.y, [(PGDLinf(steps=eval_steps, restarts=1), [eps])], batch_size=FINAL_CHECK_BATCH, seed=seed, device=dev
        )  # fmt: skip
        write_training_html(
            html_path, title=f"robust train: {title}", columns=columns, rows=rows, caption=caption,
            meta=[("model", str(path)), ("arch", arch_name), ("data", train.name), ("test data", test.name),
                  ("config", settings(config.__dict__)), ("device", str(dev))],
            histories={defense: history},
            samples=[(f"Points the final PGD-{eval_steps} check broke (eps {eps:g})", sample, searched)],
        )  # fmt: skip
    if json_path:
        write_json(
            json_path,
            {
                "command": "train",
                "out": str(path),
                "arch": arch_name,
                "data": train.name,
                "test_data": test.name,
                "config": config.__dict__,
                "device": str(dev),
                "clean_accuracy": check.clean_accuracy,
                "pgd_accuracy": check.pgd_accuracy,
                "pgd": {"eps": eps, "steps": eval_steps, "restarts": 1, "n": check.n},
                "history": history,
                "checkpoint": str(checkpointer.checkpoint_path),
                "log": str(checkpointer.log_path),
            },
        )
