"""`--html` on the trainers: the page parses, its images decode, nothing is fetched, the table holds
the measured figures, the images are the final evaluation's own, and a bad path fails before training."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from hostile_files import one_error_line
from robustcli.attacks.evaluate import evaluate
from robustcli.attacks.pgd import PGDLinf
from robustcli.defenses.evaluation import clean_and_pgd_accuracy
from robustcli.report_charts import training_curve_png
from PIL import Image

from robustcli.training_report import FINAL_CHECK_BATCH, first_batch_sample, write_training_html
from test_html_report import CHROMIUM, chromium_screenshot, decode_images, parse_page

TINY = {
    "train": ["train", "--data", "digits", "--arch", "digits-mlp", "--epochs", "2", "--train-n", "96", "--n", "40",
              "--attack-steps", "1", "--eval-steps", "3"],
    "train-moe": ["train-moe", "--data", "digits", "--mode", "at", "--no-dense", "--epochs", "1", "--train-n", "64",
                  "--n", "20", "--attack-steps", "1", "--eval-steps", "2"],
    "train-ibp": ["train-ibp", "--data", "digits", "--eps", "0.1", "--epochs", "2", "--n-train", "64", "--n", "30",
                  "--pgd-steps", "3"],
    "distill": ["distill", "--data", "digits", "--teacher", "digits-mlp", "--arch", "digits-mlp", "--epochs", "1",
                "--train-n", "64", "--temperature", "20", "--evaluate", "--n", "20"],
}  # fmt: skip


def test_train_html_has_table_curve_and_grid(run_cli, tmp_path):
    html, js = tmp_path / "t.html", tmp_path / "t.json"
    r = run_cli(*TINY["train"], "--eps", "0.2", "--out", tmp_path / "m.safetensors", "--html", html, "--json", js)
    assert r.exit_code == 0, r.output
    page = parse_page(html)
    assert page.headings[1:4] == ["Final evaluation", "Training curve", "Points the final PGD-3 check broke (eps 0.2)"]
    assert len(decode_images(page)) == 2  # the curve and the grid (an untrained-ish MLP breaks at eps 0.2)
    report = json.loads(js.read_text())
    text = " ".join(page.text)
    for key in ("clean_accuracy", "pgd_accuracy"):
        assert f"{100 * report[key]:.1f}%" in text
    assert "Drawn from the first 40 test points." in text
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("trainer", ["train-moe", "train-ibp", "distill"])
def test_trainer_html_pages(run_cli, tmp_path, trainer):
    html = tmp_path / "r.html"
    r = run_cli(*TINY[trainer], "--out", tmp_path / "m.safetensors", "--html", html)
    assert r.exit_code == 0, r.output
    page = parse_page(html)
    assert {"Final evaluation", "Training curve"} <= set(page.headings)
    grids = [h for h in page.headings if h.startswith("Points")]
    assert len(grids) == 1, page.headings
    images = decode_images(page)
    assert 1 <= len(images) <= 2  # the curve, and the grid when the attack broke a point
    text = " ".join(page.text)
    assert "nothing to show" in text or len(images) == 2
    if trainer == "train-ibp":
        assert "IBP-verified accuracy" in text
    if trainer == "distill":
        assert "Gradient-masking diagnostics of the distilled model" in page.headings


@pytest.mark.parametrize("trainer", sorted(TINY))
@pytest.mark.parametrize("name", ["r.txt", "missing/r.html"])
def test_bad_html_path_exits_2_before_training(run_cli, tmp_path, trainer, name):
    line = one_error_line(run_cli(*TINY[trainer], "--out", tmp_path / "m.safetensors", "--html", tmp_path / name))
    assert "--html" in line
    assert not list(tmp_path.iterdir())  # no checkpoint, log or model: nothing ran


def test_first_batch_rerun_reproduces_the_final_checks_adversarials(digits_mlp, digits_test):
    """The grid's images are the final evaluation's: evaluating only the first batch again gives the
    same adversarial examples as that batch in the run over all points."""
    assert inspect.signature(clean_and_pgd_accuracy).parameters["batch_size"].default == FINAL_CHECK_BATCH
    x, y, dev = digits_test.x[:300], digits_test.y[:300], torch.device("cpu")
    attacks = [(PGDLinf(steps=3, restarts=1), [0.1])]
    whole = evaluate(digits_mlp, x, y, attacks, device=dev, batch_size=FINAL_CHECK_BATCH, seed=3, keep_adversarials=True)
    head = evaluate(
        digits_mlp, x[:FINAL_CHECK_BATCH], y[:FINAL_CHECK_BATCH], attacks, device=dev, batch_size=FINAL_CHECK_BATCH,
        seed=3, keep_adversarials=True,
    )  # fmt: skip
    key = "pgd/linf/0.1"
    assert torch.equal(head.adversarials[key], whole.adversarials[key][:FINAL_CHECK_BATCH])
    assert torch.equal(head.outcomes[0].broken, whole.outcomes[0].broken[:FINAL_CHECK_BATCH])
    sample, searched = first_batch_sample(digits_mlp, x, y, attacks, batch_size=FINAL_CHECK_BATCH, seed=3, device=dev)
    assert searched == f"the first {FINAL_CHECK_BATCH} test points"
    assert sample is not None and bool(whole.outcomes[0].broken[sample.index].all())
    assert torch.equal(sample.x_adv, whole.adversarials[key][sample.index])
    assert bool((sample.pred_adv != sample.y).all())


def test_training_curve_skips_missing_values():
    assert training_curve_png({"a": []}, title="t") is None
    assert training_curve_png({"a": [{"epoch": 0, "loss": float("nan")}]}, title="t") is None
    png = training_curve_png(
        {"a": [{"epoch": 0, "loss": 1.0, "holdout_accuracy": float("nan")}, {"epoch": 1, "loss": 0.5}]}, title="t"
    )
    assert png is not None and png.startswith(b"\x89PNG")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
def test_training_page_renders_in_headless_chromium(digits_mlp, digits_test, tmp_path):
    """A real browser paints the trainers' page: its table, the curve and the grid's grey images."""
    x, y = digits_test.x[:64], digits_test.y[:64]
    sample, searched = first_batch_sample(
        digits_mlp, x, y, [(PGDLinf(steps=3, restarts=1), [0.2])], batch_size=FINAL_CHECK_BATCH, seed=0,
        device=torch.device("cpu"),
    )  # fmt: skip
    assert sample is not None
    html = tmp_path / "page.html"
    history = [{"epoch": e, "loss": 2.0 / (e + 1), "adv_acc": 0.1 * e} for e in range(4)]
    write_training_html(
        html, title="robust train: test page", meta=[("model", "m.safetensors")], columns=["model", "clean acc"],
        rows=[["m.safetensors", "90.0%"]], caption=None, histories={"pgd-at": history},
        samples=[("Points the final PGD-3 check broke (eps 0.2)", sample, searched)],
    )  # fmt: skip
    assert len(decode_images(parse_page(html))) == 2
    shot = chromium_screenshot(html, tmp_path)
    assert shot.exists(), "chromium wrote no screenshot"
    img = Image.open(shot).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, table, chart, images: not a blank page
    pixels = img.load()
    assert any(
        abs(pixels[i, j][0] - pixels[i, j][1]) < 3 and 60 < pixels[i, j][0] < 200
        for i in range(0, img.width, 7)
        for j in range(0, img.height, 7)
    )
