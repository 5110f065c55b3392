"""Regenerate the README's "Real output" block: run the command and paste what it printed.

    OMP_NUM_THREADS=2 python scripts/readme_output.py          # rewrites README.md in place
    python scripts/readme_output.py --check                    # exit 1 if the block's tables changed

The block sits between `<!-- real-output -->` and `<!-- /real-output -->`. The command's stdout
(the results table, the gradient-masking diagnostics table and any warnings) is pasted whole; the
progress bars go to stderr and are left out. Times and images/s vary from run to run; the accuracy
columns are deterministic given the seed, which `--check` compares.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COMMAND = "robust attack --model mnist-cnn --attack fgsm pgd cw --eps 0.1 0.2 0.3 --n 200"
START, END = "<!-- real-output -->", "<!-- /real-output -->"


def run_command() -> str:
    words = shlex.split(COMMAND)
    robust = Path(sys.executable).parent / "robust"
    env = {**os.environ, "COLUMNS": "100"}
    out = subprocess.run([str(robust), *words[1:]], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    return "\n".join(line.rstrip() for line in out.stdout.strip("\n").splitlines())


def block(output: str) -> str:
    return f"{START}\nReal output (`{COMMAND}`):\n\n```\n{output}\n```\n{END}"


def _deterministic(text: str) -> list[str]:
    """Table rows without the time and img/s columns."""
    rows = [line for line in text.splitlines() if line.startswith("│")]
    return [re.sub(r"│[^│]*s │[^│]*│$", "", row) if "img/s" not in row else row for row in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of rewriting")
    args = ap.parse_args()
    text = README.read_text()
    if START not in text or END not in text:
        sys.exit(f"README.md lacks the markers {START} ... {END}")
    head, rest = text.split(START, 1)
    old, tail = rest.split(END, 1)
    output = run_command()
    if args.check:
        same = _deterministic(old) == _deterministic(output)
        print("README real output is current" if same else "README real output differs; run scripts/readme_output.py")
        sys.exit(0 if same else 1)
    README.write_text(head + block(output) + tail)
    print(f"README.md: real output of `{COMMAND}` pasted ({len(output.splitlines())} lines)")


if __name__ == "__main__":
    main()
