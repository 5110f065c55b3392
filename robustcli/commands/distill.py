"""`robust distill`: defensive distillation (Papernot et al. 2016), and the attack comparison
that shows why it is not a defense (`--evaluate`)."""

from __future__ import annotations

import math
from pathlib import Path

import click

from robustcli.attacks.diagnostics import run_diagnostics
from robustcli.defenses.distillation import (
    attack_distilled,
    ce_gradient_norms,
    distillation_attacks,
    logit_scale,
    soft_labels,
    train_at_temperature,
)
from robustcli.core import distributed
from robustcli.core.checkpoint import Checkpointer
from robustcli.commands._training import apply_options, epoch_progress, new_model, train_test_data, training_options
from robustcli.core.device import resolve_device
from robustcli.core.nn import model_float_dtype
from robustcli.data import Dataset
from robustcli.models import load_model, save_model
from robustcli.options import RobustCommand, config_option, json_option, points_option
from robustcli.progress import progress_bar
from robustcli.report import fmt, pct, print_table, stdout, write_json
from robustcli.session import check_finite_logits, check_model_on_data
from robustcli.tables import diagnostics_table
from robustcli.html_page import Section, paragraph
from robustcli.html_report import diagnostics_section, html_option
from robustcli.training_report import FINAL_CHECK_BATCH, first_batch_sample, write_training_html
from robustcli.training_requests import DistillRequest
from robustcli.training import accuracy

VANISHED = 1e-12  # an input-gradient norm below this is zero for every attack that uses it


def sibling(path: Path, role: str) -> Path:
    """distilled.safetensors -> distilled.teacher.safetensors (its checkpoint: distilled.teacher.ckpt.pt)."""
    return path.with_name(f"{path.stem}.{role}{path.suffix}")


def _phase(model, x, target, temperature, path, resume, first, *, epochs, lr, batch_size, seed, role):
    ckpt = Checkpointer(path)
    # Later phases of a resumed run start fresh when the run was killed before they began.
    resume_here = resume and (first or ckpt.checkpoint_path.exists())
    with epoch_progress(f"{role} (T={temperature:g})", epochs, len(x), batch_size) as on_batch:
        return train_at_temperature(
            model, x, target, temperature=temperature, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
            checkpointer=ckpt, resume=resume_here, on_batch=on_batch, role=role,
        )  # fmt: skip


def _summary(name: str, model, x, y, evaluation, diagnostics) -> dict:
    grads = ce_gradient_norms(model, x[evaluation.clean_correct], y[evaluation.clean_correct]).cpu()
    rows = {f"{o.attack}": o.summary() for o in evaluation.outcomes if o.attack != "worst-case"}
    return {
        "model": name,
        "clean_accuracy": evaluation.clean_accuracy,
        "logit_spread_median": logit_scale(model, x),
        "ce_gradient_vanished_share": (grads < VANISHED).float().mean().item() if len(grads) else math.nan,
        "ce_gradient_norm_median": grads.median().item() if len(grads) else math.nan,
        "attacks": rows,
        "diagnostics": [vars(c) for c in diagnostics.checks],
        "warnings": [w.to_dict() for w in diagnostics.warnings],
    }


@click.command("distill", cls=RobustCommand)
@config_option
@apply_options(training_options)
@click.option("--temperature", type=float, default=DistillRequest.temperature, show_default=True, help="Softmax temperature T of training.")
@click.option("--teacher", default=None, type=click.Path(dir_okay=False), help="Use this model as the teacher instead of training one.")
@click.option("--arch", default=None, help="Built-in architecture (default mnist-cnn / digits-cnn), path/to/file.py:factory or package.module:factory.")
@click.option("--evaluate/--no-evaluate", default=False, help="Attack the distilled model and a T=1 baseline: FGSM, PGD-CE, PGD-margin, CW.")
@click.option("--eval-eps", type=float, default=DistillRequest.eval_eps, show_default=True, help="Linf budget of FGSM and PGD in --evaluate.")
@points_option(DistillRequest.num_points, help="Test points attacked in --evaluate.", old=("--eval-n",), name="eval_n")
@json_option
@html_option
def command(
    data, test_data, train_n, epochs, lr, batch_size, out, resume, device, seed, temperature, teacher, arch, evaluate,
    eval_eps, eval_n, json_path, html_path,
) -> None:  # fmt: skip
    """Train a distilled model at temperature T and deploy it at T = 1.

    With --evaluate, also train a T = 1 baseline for the same epochs and attack both: FGSM and
    PGD on cross-entropy stop working on the distilled model (gradients vanish), while attacks on
    the logits (PGD on the margin, Carlini-Wagner) still succeed. Distillation masks gradients;
    it does not make the model robust.

    \b
    robust distill --data mnist --temperature 100 --out distilled.safetensors --evaluate
    """
    request = DistillRequest(
        data=data, test_data=test_data, n_train=train_n, epochs=epochs, lr=lr, batch_size=batch_size, out=out,
        resume=resume, seed=seed, html=html_path, temperature=temperature, teacher=teacher, arch=arch,
        evaluate=evaluate, eval_eps=eval_eps, num_points=eval_n,
    )  # fmt: skip
    run(request, device, json_path)


def run(request: DistillRequest, device: str | None, json_path: str | None) -> None:
    """Train the teacher (unless given) and the student, optionally attack both, and report."""
    r = request
    data, arch, teacher, temperature, resume, seed = r.data, r.arch, r.teacher, r.temperature, r.resume, r.seed
    epochs, eval_eps, path = r.epochs, r.eval_eps, r.out_path
    html_path = r.html if distributed.is_main() else None  # under torchrun rank 0 writes the page
    dev = resolve_device(device)
    train, test = train_test_data(data, r.test_data, r.n_train)
    kw = dict(epochs=epochs, lr=r.lr, batch_size=r.batch_size, seed=seed)
    histories: dict[str, list[dict]] = {}  # per trained model, for the HTML page's curve
    if teacher is not None:
        # the teacher runs in its own precision (a float64 file keeps its weights): checked on the
        # training points cast to it, as `soft_labels` feeds them
        teacher_model = load_model(teacher, device=dev, onnx_precision="file").module
        teacher_view = Dataset(train.x.to(model_float_dtype(teacher_model)), train.y, train.name, train.provenance)
        check_model_on_data(teacher_model, teacher_view, dev)
        check_finite_logits(teacher_model, teacher_view, dev)
        teacher_source = teacher
        student, arch_name = new_model(arch, data, train, dev, seed + 1)
    else:
        teacher_model, arch_name = new_model(arch, data, train, dev, seed)
        teacher_path = sibling(path, "teacher")
        histories["teacher"] = _phase(
            teacher_model, train.x, train.y, temperature, teacher_path, resume, True, role="teacher", **kw
        )
        save_model(
            teacher_model, teacher_path, arch_name,
            extra={"trained_on": train.name, "defense": "distillation-teacher", "temperature": temperature},
        )  # fmt: skip
        teacher_source = str(teacher_path)
        student, _ = new_model(arch, data, train, dev, seed + 1)
    soft = soft_labels(teacher_model, train.x, temperature)
    history = _phase(student, train.x, soft, temperature, path, resume, teacher is not None, role="student", **kw)
    histories["student"] = history
    save_model(
        student, path, arch_name,
        extra={
            "trained_on": train.name, "defense": "distillation", "temperature": temperature,
            "deployed_temperature": 1, "teacher": teacher_source,
        },
    )  # fmt: skip
    report = {
        "command": "distill",
        "out": str(path),
        "arch": arch_name,
        "data": train.name,
        "test_data": test.name,
        "temperature": temperature,
        "teacher": teacher_source,
        "device": str(dev),
        "epochs": epochs,
        "test_accuracy": accuracy(student, test.x, test.y),
        "logit_spread_median": logit_scale(student, test.x[:500]),
        "history": history,
    }
    rows = [[str(path), f"T={temperature:g}, deployed at T=1", pct(report["test_accuracy"]), fmt(report["logit_spread_median"])]]
    if r.evaluate:
        baseline, _ = new_model(arch, data, train, dev, seed + 2)
        histories["baseline"] = _phase(
            baseline, train.x, train.y, 1.0, sibling(path, "baseline"), resume, False, role="baseline", **kw
        )
        sub = test.head(r.num_points)
        results, diagnosed = [], None
        for name, model in (("baseline (T=1)", baseline), (f"distilled (T={temperature:g})", student)):
            with progress_bar(f"attacking {name}", 5 * len(sub)) as advance:
                ev = attack_distilled(model, sub.x, sub.y, eps=eval_eps, seed=seed, on_batch=advance)
            diagnosed = run_diagnostics(ev, model, sub.x, sub.y, device=dev, seed=seed)
            results.append(_summary(name, model, sub.x, sub.y, ev, diagnosed))
        report["evaluation"] = {"eps": eval_eps, "n": len(sub), "models": results}
        table = _evaluation_table(report["evaluation"], sub.name)
        stdout.print(f"Diagnostics of the distilled model ({len(diagnosed.warnings)} warnings):")
        diagnostics_table(diagnosed)
    else:
        table = (
            f"Defensive distillation of {arch_name} on {train.name} ({epochs} epochs per model)",
            ["model", "temperature", "test acc", "median logit spread"],
            rows,
            None,
        )
        print_table(*table[:3])
    if json_path:
        write_json(json_path, report)
    if html_path:
        title, columns, table_rows, caption = table
        samples, extra = [], []
        if r.evaluate:
            # the Linf gradient attacks of --evaluate; CW (unbounded) is left out of the images
            linf = [(a, e) for a, e in distillation_attacks(eval_eps) if a.name in ("pgd", "pgd-margin")]
            sample, searched = first_batch_sample(
                student, sub.x, sub.y, linf, batch_size=FINAL_CHECK_BATCH, seed=seed, device=dev
            )
            samples.append((f"Points PGD broke on the distilled model (Linf eps {eval_eps:g})", sample, searched))
            distilled = results[-1]
            section = diagnostics_section(distilled["diagnostics"], distilled["warnings"])
            section.heading += " of the distilled model"
            extra.append(section)
        else:
            note = "No attack ran in this run; --evaluate attacks the distilled model and a T = 1 baseline."
            extra.append(Section("Attacks", [paragraph(note, "muted")]))
        write_training_html(
            html_path, title=f"robust distill: {title}", columns=columns, rows=table_rows, caption=caption,
            meta=[("model", str(path)), ("arch", arch_name), ("data", train.name), ("test data", test.name),
                  ("temperature", temperature), ("teacher", teacher_source), ("seed", seed), ("device", str(dev))],
            histories=histories, samples=samples, extra=extra,
        )  # fmt: skip


def _evaluation_table(ev: dict, data_name: str) -> tuple[str, list[str], list[list[str]], str]:
    columns = ["model", "clean", "logit spread", "CE grad 0", "FGSM", "PGD-CE", "PGD-mrg", "APGD-DLR", "CW (L2)",
               "flags"]  # fmt: skip
    rows = []
    for m in ev["models"]:
        a = m["attacks"]
        cw = a["cw"]
        rows.append(
            [
                m["model"],
                pct(m["clean_accuracy"]),
                fmt(m["logit_spread_median"]),
                pct(m["ce_gradient_vanished_share"]),
                pct(a["fgsm"]["success_rate"]),
                pct(a["pgd"]["success_rate"]),
                pct(a["pgd-margin"]["success_rate"]),
                pct(a["apgd-dlr"]["success_rate"]),
                f"{pct(cw['success_rate'])} ({fmt(cw['median_perturbation'], 3)})",
                str(len(m["warnings"])),
            ]
        )
    title = f"Attack success on {data_name} (n={ev['n']}, Linf eps {ev['eps']:g}; CW unbounded)"
    caption = "success = share of correctly classified points the attack broke; flags = masking warnings"
    print_table(title, columns, rows, caption=caption)
    return title, columns, rows, caption
