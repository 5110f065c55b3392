"""The verifier's timeout inside native graph CROWN (certify/dag_bounds.py): a residual CNN with a
3x32x32 input and 32 channels, one VNNLIB box, `verify_property` with several timeouts; printed per
timeout: the answer, when it came, and each stage's seconds and note.

    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 19 python benchmarks/graph_deadline.py --timeouts 4 6 30

The model (random weights, `--seed`): Conv 3->32, ReLU, Residual(Conv 32->32, ReLU, Conv 32->32),
ReLU, Linear 32768 -> 10; the box has half-width `--eps` around a random point in [0, 1]. With a
timeout shorter than the CROWN stage needs, the answer is `timeout` within a part of CROWN rows of
the deadline (the clock is read before every bounded node and every part of its rows).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from torch import nn

from robustcli.certify.spec_verify import verify_property
from robustcli.certify.vnnlib import parse_vnnlib, robustness_vnnlib
from robustcli.core.nn import Residual


def res32(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        Residual(nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1))),
        nn.ReLU(), nn.Flatten(), nn.Linear(32 * 32 * 32, 10),
    ).eval()  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--timeouts", type=float, nargs="+", default=[4.0, 6.0, 30.0])
    p.add_argument("--eps", type=float, default=0.003)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=["crown"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    model = res32(args.seed).to(args.device)  # the verifier runs on the model's device
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(args.seed + 1)).to(args.device)
    with torch.no_grad():
        label = int(model(x).argmax())
    lo, hi = (x - args.eps).clamp(0, 1).flatten().cpu(), (x + args.eps).clamp(0, 1).flatten().cpu()
    prop = parse_vnnlib(robustness_vnnlib(lo, hi, label, 10))
    verify_property(model, prop, (3, 32, 32), methods=("ibp",), timeout=600)  # imports, once per process
    for timeout in args.timeouts:
        t0 = time.monotonic()
        res = verify_property(model, prop, (3, 32, 32), methods=tuple(args.methods), timeout=timeout)
        took = time.monotonic() - t0
        stages = "; ".join(f"{s['method']} {s['seconds']:.2f} s ({s.get('note', '')})" for s in res.stages)
        print(f"timeout {timeout:g} s: {res.status} after {took:.2f} s ({took - timeout:+.2f} s); {stages}")


if __name__ == "__main__":
    main()
