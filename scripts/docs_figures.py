"""Regenerate the command outputs and plots shown in README.md and docs/ from the commands themselves.

Each figure is a `robust` command or a repository script (`benchmarks/...py`, run with this
Python); its table (stdout) replaces the fenced block between `<!-- figure:ID -->` and
`<!-- /figure:ID -->` in its document, preceded by the command line, and any PNG it writes lands
in docs/img/. A figure of a refusal (`expect_exit=2`) shows the one-line error (stderr) instead,
and fails unless the command exits with exactly that code. So the docs show what a fresh
checkout prints, built-in models and the official MNIST included (fetched and trained on first
use, in $ROBUSTCLI_CACHE).

    python scripts/docs_figures.py --list
    python scripts/docs_figures.py                      # every figure (tens of minutes on 2 cores)
    python scripts/docs_figures.py tightness-mnist readme-attack

Figures run in order in one scratch folder, so a figure may read what an earlier one wrote
(`trainibp-digits-certify` certifies the weights `trainibp-digits` trained). Timings inside the tables are wall-clock on whatever machine runs this; the rest is seeded and
reproducible for a given torch version and device.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Figure:
    id: str
    doc: str  # relative to the repository root
    args: tuple[str, ...]  # arguments of `robust`, or of `script` when given
    script: str | None = None  # a Python script relative to the repository root, run instead of `robust`
    expect_exit: int | None = None  # a refusal: the command must exit with this code; its stderr is shown

    @property
    def command(self) -> str:
        if self.script is not None:
            return "python " + shlex.join((self.script, *self.args))
        return "robust " + shlex.join(self.args)

    def argv(self) -> list[str]:
        """What to execute: repository paths in the arguments made absolute, since it runs in a scratch folder."""
        args = [str(ROOT / a) if a.startswith(("docs/", "configs/")) else a for a in self.args]
        if self.script is not None:
            return [sys.executable, str(ROOT / self.script), *args]
        return [sys.executable, "-m", "robustcli", *args]


FIGURES = (
    Figure("readme-attack", "README.md",
           ("attack", "--model", "mnist-cnn", "--attack", "fgsm", "pgd", "cw", "--eps", "0.1", "0.2", "0.3", "--n", "200")),
    Figure("certify-mnist", "docs/certify.md",
           ("certify", "--model", "mnist-cnn", "--eps", "0.005", "0.01", "--method", "ibp", "crown-ibp", "crown",
            "--n", "100")),
    Figure("tightness-mnist", "docs/certify.md",
           ("tightness", "--model", "mnist-cnn", "--eps", "0.1", "--n", "500", "--at-init", "--seed", "0")),
    Figure("strong-mnist", "docs/strong.md",
           ("attack", "--model", "mnist-cnn", "--attack", "fgsm", "pgd", "--suite", "strong", "--eps", "0.1", "0.2",
            "--n", "100", "--queries", "1000")),
    Figure("scaling-mnist", "docs/analyses.md",
           ("analyze", "scaling", "--model", "mnist-cnn", "--attack", "fgsm", "pgd", "--n", "500", "--steps", "20",
            "--png", "docs/img/analyses-scaling.png")),
    Figure("tilting-mnist", "docs/analyses.md",
           ("analyze", "tilting", "--data", "mnist", "--classes", "3", "7", "--weight-decay", "0", "1e-4", "1e-3", "1e-2",
            "1e-1", "1", "--png", "docs/img/analyses-tilting.png")),
    Figure("tilting-local-mnist", "docs/analyses.md", ("analyze", "tilting", "--model", "mnist-cnn", "--classes", "3", "7")),
    Figure("eval-ci", "docs/analyses.md", ("eval", "configs/ci-example.yaml")),
    Figure("trainibp-digits", "docs/trainibp.md", ("train-ibp", "--config", "configs/train-ibp-digits-tiny.yaml")),
    # reads the weights the previous figure wrote: run the two together
    Figure("trainibp-digits-certify", "docs/trainibp.md", ("certify", "--model", "digits-ibp.safetensors", "--eps", "0.1")),
    Figure("train-no-warmup-mnist", "docs/defenses.md",
           ("train", "--data", "mnist", "--n-train", "20000", "--epochs", "3", "--warmup", "0", "--eps", "0.3",
            "--eval-steps", "20", "--n", "1000", "--out", "no-warmup.safetensors")),
    Figure("train-warmup-mnist", "docs/defenses.md",
           ("train", "--data", "mnist", "--n-train", "20000", "--epochs", "3", "--warmup", "1", "--eps", "0.3",
            "--eval-steps", "20", "--n", "1000", "--out", "warmup.safetensors")),
    Figure("train-trades-digits", "docs/defenses.md",
           ("train", "--data", "digits", "--defense", "trades", "--eps", "0.2", "--epochs", "4", "--warmup", "1",
            "--out", "t1.safetensors")),
    # attacks the weights the previous figure wrote: run the two together
    Figure("attack-trades-digits", "docs/defenses.md",
           ("attack", "--model", "t1.safetensors", "--data", "digits", "--attack", "pgd", "--eps", "0.2")),
    Figure("distill-mnist", "docs/defenses.md",
           ("distill", "--data", "mnist", "--n-train", "20000", "--epochs", "10", "--temperature", "100",
            "--out", "distilled.safetensors", "--evaluate", "--eval-eps", "0.3", "--n", "100")),
    Figure("threshold-refusal-mnist", "docs/defenses.md",
           ("threshold", "--model", "mnist-cnn", "--unsafe-class", "0", "--target-fnr", "0.001", "--eps", "0.1"),
           expect_exit=2),
    Figure("threshold-mnist", "docs/defenses.md",
           ("threshold", "--model", "mnist-cnn", "--unsafe-class", "0", "--target-fnr", "0.01", "--attack", "pgd",
            "--eps", "0.1")),
    Figure("threshold-at-mnist", "docs/defenses.md",
           ("--epochs", "3", "--eps", "0.1", "--target-fnr", "0.01"), script="benchmarks/defenses_threshold_at.py"),
    Figure("train-moe-digits", "docs/defenses.md",
           ("train-moe", "--data", "digits", "--epochs", "3", "--warmup", "1", "--eps", "0.2", "--n-train", "600",
            "--eval-steps", "10", "--out", "moe.safetensors")),
    Figure("advmoe-mnist", "docs/defenses.md",
           ("--n-train", "10000", "--epochs", "5", "--n-test", "5000", "--n", "100"), script="benchmarks/advmoe_mnist.py"),
)  # fmt: skip


def block_pattern(figure_id: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- figure:{re.escape(figure_id)} -->\n)(.*?)(<!-- /figure:{re.escape(figure_id)} -->)", re.S)


def run(figure: Figure, workdir: Path) -> str:
    """The command's stdout (progress bars go to stderr), or a refusal's stderr; raises if it fails."""
    env = dict(os.environ, COLUMNS="160")
    proc = subprocess.run(figure.argv(), cwd=workdir, env=env, capture_output=True, text=True)
    if figure.expect_exit is not None:
        if proc.returncode != figure.expect_exit:
            raise RuntimeError(f"{figure.command} exited {proc.returncode}, not {figure.expect_exit}: "
                               f"{proc.stderr.strip()[-2000:]}")  # fmt: skip
        shown = proc.stderr
    elif proc.returncode not in (0, 1):  # 1: a gate or --strict check failed, which is still a figure
        raise RuntimeError(f"{figure.command} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    else:
        shown = proc.stdout
    return "\n".join(line.rstrip() for line in shown.rstrip().splitlines())


def write_figure(figure: Figure, output: str) -> None:
    path = ROOT / figure.doc
    text = path.read_text()
    pattern = block_pattern(figure.id)
    if not pattern.search(text):
        raise RuntimeError(f"{figure.doc} has no <!-- figure:{figure.id} --> ... <!-- /figure:{figure.id} --> block")
    block = f"```\n$ {figure.command}\n{output}\n```\n"
    path.write_text(pattern.sub(lambda m: m.group(1) + block + m.group(3), text, count=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ids", nargs="*", help="figures to regenerate (default: all)")
    parser.add_argument("--list", action="store_true", help="list the figures and exit")
    opts = parser.parse_args()
    known = {f.id: f for f in FIGURES}
    if opts.list:
        for f in FIGURES:
            print(f"{f.id:22s} {f.doc:20s} {f.command}")
        return 0
    unknown = [i for i in opts.ids if i not in known]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; see --list")
    with tempfile.TemporaryDirectory(prefix="docs-figures-") as workdir:  # configs' side files land here
        for figure in [known[i] for i in opts.ids] or FIGURES:
            start = time.perf_counter()
            write_figure(figure, run(figure, Path(workdir)))
            print(f"{figure.id}: {figure.doc} updated ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
