"""Low-dimensional verification benchmark: 5-input control-style networks, answers from an exact MILP.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/lowdim_control.py --out /tmp/lowdim --timeout 20

Builds, in --out, a VNN-COMP style benchmark folder: `--nets` ReLU networks with 5 inputs,
`--depth` hidden layers of `--width` ReLUs and 5 outputs (the ACAS Xu shape), each trained for a
few hundred Adam steps to imitate a smooth teacher (a random tanh network: a stand-in for a
control law's advisory scores) on [-1, 1]^5; `--props` properties per network: an input box
around a random state (radius from --radii) on which the advisory with the highest score at its
centre must stay the highest (VNNLIB, violated iff another output >= it). Files: net_k.onnx,
prop_k_i.vnnlib, instances.csv (network, property, timeout), ground_truth.csv.

Ground truth is exact and independent of the verifier: a mixed-integer program per (property,
other output j), min Y_label - Y_j over the box with the standard big-M ReLU encoding (neuron bounds
from interval arithmetic tightened by the LP triangle relaxation, binaries only for ReLUs still
unstable), solved by scipy's HiGHS. The
property holds iff every minimum is > 0; a MILP minimiser <= 0 is re-checked on the network.

Then the benchmark is run through `robust vnncomp`'s engine (certify/vnncomp.py, one process) and
the script prints, per answer, how many agree with the MILP, how many are wrong (a `holds` where
the MILP found a violation counts as unsound), and the time distribution.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def control_net(seed: int, depth: int, width: int, steps: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    teacher = nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 5))
    for p in teacher.parameters():
        p.data = torch.randn(p.shape, generator=g) * 1.5 / max(1, p.shape[-1]) ** 0.5
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    d = 5
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, 5))
    net = nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        x = torch.rand(256, 5, generator=g) * 2 - 1
        with torch.no_grad():
            y = teacher(x)
        loss = (net(x) - y).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def write_onnx(net: nn.Module, path: Path) -> None:
    torch.onnx.export(net, (torch.zeros(1, 5),), str(path), dynamo=False, input_names=["x"], output_names=["y"])


def write_vnnlib(path: Path, lo: np.ndarray, hi: np.ndarray, label: int) -> None:
    lines = [f"(declare-const X_{i} Real)" for i in range(5)] + [f"(declare-const Y_{j} Real)" for j in range(5)]
    for i in range(5):
        lines += [f"(assert (>= X_{i} {float(lo[i])!r}))", f"(assert (<= X_{i} {float(hi[i])!r}))"]
    ors = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(5) if j != label)
    lines.append(f"(assert (or {ors}))")
    path.write_text("\n".join(lines) + "\n")


def interval_bounds(layers: list[tuple[np.ndarray, np.ndarray]], lo: np.ndarray, hi: np.ndarray):
    """Pre-activation intervals of every hidden layer (sound: interval arithmetic in float64)."""
    out = []
    c, r = (hi + lo) / 2, (hi - lo) / 2
    for w, b in layers[:-1]:
        c, r = w @ c + b, np.abs(w) @ r
        out.append((c - r, c + r))
        l_, u_ = np.maximum(c - r, 0), np.maximum(c + r, 0)
        c, r = (u_ + l_) / 2, (u_ - l_) / 2
    return out


def lp_tightened_bounds(layers, lo, hi):
    """Pre-activation bounds tightened layer by layer with the LP (triangle) relaxation: for each
    neuron unstable under interval arithmetic, min and max of z over the relaxation of the layers
    before it (two LPs). Sound and independent of the verifier under test."""
    from scipy.optimize import linprog

    pre: list[tuple[np.ndarray, np.ndarray]] = []
    for depth in range(len(layers) - 1):
        w, b = layers[depth]
        if depth == 0:
            c, r = (hi + lo) / 2, (hi - lo) / 2
            pre.append((w @ c + b - np.abs(w) @ r, w @ c + b + np.abs(w) @ r))
            continue
        l_prev, u_prev = pre[-1]
        hl, hu = np.maximum(l_prev, 0), np.maximum(u_prev, 0)
        c, r = (hu + hl) / 2, (hu - hl) / 2
        l_, u_ = w @ c + b - np.abs(w) @ r, w @ c + b + np.abs(w) @ r
        A_ub, b_ub, A_eq, b_eq, bounds, n, prev = _relaxation(layers[:depth], pre, lo, hi)
        for j in np.nonzero((l_ < 0) & (u_ > 0))[0]:
            obj = np.zeros(n)
            obj[prev] = w[j]
            for sign in (1.0, -1.0):
                res = linprog(sign * obj, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=bounds, method="highs")
                if res.status == 0:
                    v = sign * res.fun + b[j]
                    if sign > 0:
                        l_[j] = max(l_[j], v - 1e-9 * (1 + abs(v)))
                    else:
                        u_[j] = min(u_[j], v + 1e-9 * (1 + abs(v)))
        pre.append((l_, u_))
    return pre


def _relaxation(layers, pre, lo, hi):
    """Triangle relaxation of the given hidden layers: variables x, then (z, h) per layer."""
    n_in = len(lo)
    n = n_in + sum(2 * len(b) for _, b in layers)
    eq, ub = [], []
    bounds = [(float(a), float(c)) for a, c in zip(lo, hi)]
    prev, off = list(range(n_in)), n_in
    for (w, b), (l_, u_) in zip(layers, pre):
        k = len(b)
        oz, oh = off, off + k
        for j in range(k):
            coefs = {oz + j: 1.0}
            for i, p in enumerate(prev):
                coefs[p] = coefs.get(p, 0.0) - w[j, i]
            eq.append((coefs, b[j]))
        bounds += [(float(l_[j]), float(u_[j])) for j in range(k)]
        for j in range(k):
            if l_[j] >= 0:
                eq.append(({oh + j: 1.0, oz + j: -1.0}, 0.0))
                bounds.append((0.0, float(u_[j])))
            elif u_[j] <= 0:
                bounds.append((0.0, 0.0))
            else:
                bounds.append((0.0, float(u_[j])))
                ub.append(({oz + j: 1.0, oh + j: -1.0}, 0.0))  # h >= z
                s = u_[j] / (u_[j] - l_[j])
                ub.append(({oh + j: 1.0, oz + j: -s}, -s * l_[j]))  # h <= s (z - l)
        prev, off = [oh + j for j in range(k)], off + 2 * k

    A_eq, b_eq = _sparse_rows(eq, n)
    A_ub, b_ub = _sparse_rows(ub, n) if ub else (None, None)
    return A_ub, b_ub, A_eq, b_eq, bounds, n, prev


def _sparse_rows(rows: list[tuple[dict[int, float], float]], n: int):
    """Linear constraints given as (coefficients by variable index, right-hand side) rows, as a
    sparse (len(rows), n) matrix and the right-hand sides."""
    from scipy.sparse import lil_matrix

    A = lil_matrix((len(rows), n))
    rhs = np.zeros(len(rows))
    for r, (coefs, v) in enumerate(rows):
        for col, val in coefs.items():
            A[r, col] = val
        rhs[r] = v
    return A.tocsr(), rhs


def milp_min(layers, lo, hi, row: np.ndarray, time_limit: float, pre=None):
    """min row . f(x) over the box, exactly (big-M MILP). Returns (status, value, x)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    pre = pre if pre is not None else lp_tightened_bounds(layers, lo, hi)
    n_in = len(lo)
    # variable layout: x, then per hidden layer (z, h, a)
    offs, n = [], n_in
    for l_, _ in pre:
        k = len(l_)
        offs.append((n, n + k, n + 2 * k))
        n += 3 * k
    rows_eq, rows_ub = [], []  # (coefs dict, rhs) for == and <=
    lb = np.full(n, -np.inf)
    ub = np.full(n, np.inf)
    lb[:n_in], ub[:n_in] = lo, hi
    integrality = np.zeros(n)
    prev = list(range(n_in))
    for (w, b), (l_, u_), (oz, oh, oa) in zip(layers[:-1], pre, offs):
        k = len(b)
        for j in range(k):
            coefs = {oz + j: 1.0}
            for i, p in enumerate(prev):
                coefs[p] = coefs.get(p, 0.0) - w[j, i]
            rows_eq.append((coefs, b[j]))  # z = W h + b
            lb[oz + j], ub[oz + j] = l_[j], u_[j]
            lb[oa + j], ub[oa + j] = 0, 1
            if l_[j] >= 0:
                rows_eq.append(({oh + j: 1.0, oz + j: -1.0}, 0.0))
                lb[oh + j], ub[oh + j] = 0, max(u_[j], 0)
            elif u_[j] <= 0:
                lb[oh + j], ub[oh + j] = 0, 0
            else:
                integrality[oa + j] = 1
                lb[oh + j], ub[oh + j] = 0, u_[j]
                rows_ub.append(({oz + j: 1.0, oh + j: -1.0}, 0.0))  # h >= z
                rows_ub.append(({oh + j: 1.0, oa + j: -u_[j]}, 0.0))  # h <= u a
                rows_ub.append(({oh + j: 1.0, oz + j: -1.0, oa + j: -l_[j]}, -l_[j]))  # h <= z - l (1 - a)
        prev = [oh + j for j in range(k)]
    w, b = layers[-1]
    c = np.zeros(n)
    coef = row @ w
    for i, p in enumerate(prev):
        c[p] = coef[i]
    const = float(row @ b)
    cons = []
    for rows, kind in ((rows_eq, "eq"), (rows_ub, "ub")):
        if not rows:
            continue
        A, rhs = _sparse_rows(rows, n)
        cons.append(LinearConstraint(A, rhs if kind == "eq" else -np.inf, rhs))
    res = milp(c, constraints=cons, integrality=integrality, bounds=Bounds(lb, ub),
               options={"time_limit": time_limit, "mip_rel_gap": 0.0})
    if res.status != 0 or res.x is None:
        return "unknown", None, None
    return "solved", float(res.fun) + const, res.x[:n_in]


def exact_answer(net: nn.Sequential, lo, hi, label: int, time_limit: float) -> tuple[str, float]:
    layers = [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy()) for m in net if isinstance(m, nn.Linear)]
    t0 = time.perf_counter()
    worst = np.inf
    pre = lp_tightened_bounds(layers, lo, hi)
    for j in range(5):
        if j == label:
            continue
        row = np.zeros(5)
        row[label], row[j] = 1.0, -1.0
        status, value, x = milp_min(layers, lo, hi, row, time_limit, pre)
        if status != "solved":
            return "unknown", time.perf_counter() - t0
        worst = min(worst, value)
        if value <= 0:
            with torch.no_grad():
                y = net(torch.tensor(x, dtype=torch.float32)[None])[0].double().numpy()
            if y[j] >= y[label]:
                return "violated", time.perf_counter() - t0
    return ("holds" if worst > 0 else "unknown"), time.perf_counter() - t0


def build(out: Path, args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    inst, truth = [], []
    for k in range(args.nets):
        net = control_net(args.seed + k, args.depth, args.width, args.train_steps)
        write_onnx(net, out / f"net_{k}.onnx")
        for i in range(args.props):
            centre = rng.uniform(-0.8, 0.8, 5)
            radius = float(args.radii[(k * args.props + i) % len(args.radii)])
            lo, hi = np.clip(centre - radius, -1, 1), np.clip(centre + radius, -1, 1)
            with torch.no_grad():
                label = int(net(torch.tensor(centre, dtype=torch.float32)[None]).argmax())
            prop = out / f"prop_{k}_{i}.vnnlib"
            write_vnnlib(prop, lo, hi, label)
            answer, secs = (exact_answer(net, lo, hi, label, args.milp_time_limit) if args.milp_time_limit > 0
                            else ("not-run", 0.0))
            inst.append([f"net_{k}.onnx", prop.name, args.timeout])
            truth.append([f"net_{k}.onnx", prop.name, radius, answer, f"{secs:.3f}"])
            print(f"net {k} prop {i} radius {radius}: MILP says {answer} ({secs:.1f}s)", flush=True)
    with (out / "instances.csv").open("w", newline="") as f:
        csv.writer(f).writerows(inst)
    with (out / "ground_truth.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["network", "property", "radius", "milp", "milp_seconds"]] + truth)


def run(out: Path, args) -> dict:
    from robustcli.certify.vnncomp import read_instances, run_benchmark

    truth = {(r["network"], r["property"]): r for r in csv.DictReader((out / "ground_truth.csv").open())}
    results = run_benchmark(read_instances(out / "instances.csv"), timeout=args.timeout, device=torch.device(args.device))
    rows, secs = [], []
    agree = wrong = unsound = decided = 0
    for r in results:
        t = truth[(r.instance.network.name, r.instance.property.name)]["milp"]
        ok = r.result == t
        if r.result in ("holds", "violated"):
            decided += 1
            secs.append(r.seconds)
            agree += ok
            wrong += (not ok) and t in ("holds", "violated")
            unsound += r.result == "holds" and t == "violated"
        rows.append({"network": r.instance.network.name, "property": r.instance.property.name, "result": r.result,
                     "milp": t, "seconds": round(r.seconds, 3), "method": r.method,
                     "note": (r.stages[-1].get("note") if r.stages else None)})
        print(f"{r.instance.network.name} {r.instance.property.name}: {r.result:9s} MILP {t:9s} {r.seconds:6.2f}s "
              f"{rows[-1]['note'] or ''}", flush=True)
    summary = {
        "instances": len(results), "decided": decided, "agree_with_milp": agree, "wrong": wrong,
        "unsound_holds": unsound,
        "under_5s": sum(s < 5 for s in secs), "median_s": statistics.median(secs) if secs else None,
        "max_s": max(secs) if secs else None, "timeout_s": args.timeout,
        "milp_counts": {k: sum(1 for t in truth.values() if t["milp"] == k) for k in ("holds", "violated", "unknown")},
    }
    print(json.dumps(summary, indent=1))
    return {"summary": summary, "instances": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("lowdim_control"))
    p.add_argument("--nets", type=int, default=3)
    p.add_argument("--props", type=int, default=10)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--width", type=int, default=50)
    p.add_argument("--train-steps", type=int, default=400)
    p.add_argument("--radii", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2])
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--milp-time-limit", type=float, default=120.0, help="per MILP; 0 skips the exact answers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-build", action="store_true", help="reuse the folder's networks, properties and MILP answers")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if not args.skip_build:
        build(args.out, args)
    report = run(args.out, args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
