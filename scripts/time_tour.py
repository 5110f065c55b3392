"""Run every command of the README's tour as written and print its wall and CPU time.

    OMP_NUM_THREADS=2 python scripts/time_tour.py [--only WORD] [--timeout 900]

Each command runs in a fresh temporary folder that links `configs/` and `examples/`, so the files a
command writes (reports, checkpoints, weights) do not land in the checkout. Built-in models are
trained once before timing (into $ROBUSTCLI_CACHE, default ~/.cache/robustcli) and that time is
printed separately. The figures in the README's tour comments come from this script on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tour_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Tour", 1)[1].split("\n## ", 1)[0]
    lines = [ln[4:] for ln in block.splitlines() if ln.startswith("    ") and ln.strip()]
    return [re.sub(r"\s+#.*$", "", ln).strip() for ln in lines if ln.strip().split()[0] in ("robust", "torchrun")]


def run(line: str, timeout: float) -> tuple[float, float, int, str]:
    words = shlex.split(line)
    if words[0] == "robust":
        words = [str(BIN / "robust"), *words[1:]]
    else:  # torchrun from the same environment
        words = [str(BIN / words[0]), *words[1:]]
    with tempfile.TemporaryDirectory(prefix="robust-tour-") as cwd:
        for name in ("configs", "examples"):
            os.symlink(ROOT / name, Path(cwd) / name)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        try:
            out = subprocess.run(words, cwd=cwd, capture_output=True, text=True, timeout=timeout)
            code, tail = out.returncode, (out.stderr.strip().splitlines() or [""])[-1]
        except subprocess.TimeoutExpired:
            code, tail = -1, f"timed out after {timeout:.0f} s"
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, code, tail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="run only the lines containing this text")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    t0 = time.perf_counter()
    subprocess.run([str(BIN / "robust"), "attack", "--model", "mnist-cnn", "--n", "1", "--eps", "0"], capture_output=True)
    subprocess.run([str(BIN / "robust"), "attack", "--model", "digits-mlp", "--n", "1", "--eps", "0"], capture_output=True)
    print(f"built-in models ready in {time.perf_counter() - t0:.0f} s (trained now, or already cached)", flush=True)
    print(f"{'wall s':>7} {'cpu s':>7} {'exit':>4}  command", flush=True)
    for line in tour_lines():
        if args.only and args.only not in line:
            continue
        wall, cpu, code, tail = run(line, args.timeout)
        print(f"{wall:7.1f} {cpu:7.1f} {code:4d}  {line}" + (f"\n{'':21}{tail}" if code not in (0,) else ""), flush=True)


if __name__ == "__main__":
    main()
