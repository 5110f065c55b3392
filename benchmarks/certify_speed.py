"""Native IBP vs auto_LiRPA on one model and batch; CROWN-IBP and CROWN time and verified accuracy.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/certify_speed.py --model mnist-cnn --n 256

Prints what it measured (median of --repeats timed calls after one warm-up) and asserts that
native IBP and auto_LiRPA IBP give the same bounds. Not a test: run on demand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch

from robustcli.certify import ibp_bounds, margin_spec, verified
from robustcli.certify.lirpa import LirpaBounder
from robustcli.session import open_workload


def timed(fn, repeats: int, device: torch.device = torch.device("cpu")) -> tuple[float, object]:
    def sync() -> None:  # a CUDA call returns before its kernels finish
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    t0 = time.perf_counter()
    out = fn()  # warm-up (and the result); with repeats=0 the one timed call
    sync()
    times = [time.perf_counter() - t0] if repeats == 0 else []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mnist-cnn")
    p.add_argument("--n", type=int, nargs="+", default=[16, 64, 256], help="batches for IBP (native and auto_LiRPA)")
    p.add_argument("--crown-n", type=int, default=64, help="batch for CROWN-IBP and CROWN (CROWN is slow on CPU)")
    p.add_argument("--eps", type=float, nargs="+", default=[0.005, 0.01, 0.02])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)

    w = open_workload(args.model, None, n=max(args.n + [args.crown_n]), device=args.device)
    device = w.device
    model = w.model.module.eval().requires_grad_(True)  # loaded models come frozen; training needs gradients
    rows = []
    print(f"model {args.model}, device {device}, torch threads {torch.get_num_threads()}")

    for n, eps in [(n, e) for n in args.n for e in args.eps[:1]]:
        x, y = w.data.x[:n].to(device), w.data.y[:n].to(device)
        spec = margin_spec(y, w.num_classes)
        # IBP, native vs auto_LiRPA: without gradients (certification) and with a backward pass (training).
        t0 = time.perf_counter()
        bounder = LirpaBounder(model, x, "lirpa-ibp")
        build_s = time.perf_counter() - t0
        with torch.no_grad():
            t_nat, (l_nat, u_nat) = timed(lambda: ibp_bounds(model, x, eps, "linf", spec), args.repeats, device)
        t_lir, (l_lir, u_lir) = timed(lambda: bounder.bounds(x, eps, "linf", spec), args.repeats, device)
        diff = max((l_nat - l_lir).abs().max().item(), (u_nat - u_lir).abs().max().item())
        assert diff <= 1e-4 * (1 + l_nat.abs().max().item()), f"native and auto_LiRPA IBP differ by {diff}"

        def native_train():
            lower, _ = ibp_bounds(model, x, eps, "linf", spec)
            lower.mean().backward()

        # auto_LiRPA's parameters carry gradients only in train mode (BoundParams.forward sets
        # requires_grad to the module's training flag), so the training comparison uses a bounder
        # built in train mode; for models without BN or dropout that is the same function.
        train_bounder = LirpaBounder(model.train(), x, "lirpa-ibp")
        model.eval()
        lir = train_bounder.lirpa

        def lirpa_train():
            ball = lir.PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1))
            lower, _ = train_bounder.module.compute_bounds(
                x=(lir.BoundedTensor(x, ball),), C=spec, method="IBP", bound_upper=False
            )
            lower.mean().backward()

        t_nat_bwd, _ = timed(native_train, args.repeats, device)
        t_lir_bwd, _ = timed(lirpa_train, args.repeats, device)
        rows.append({
            "eps": eps, "n": len(x), "lirpa_build_s": build_s,
            "native_ibp_s": t_nat, "lirpa_ibp_s": t_lir, "speedup": t_lir / t_nat,
            "native_ibp_points_per_s": len(x) / t_nat, "lirpa_ibp_points_per_s": len(x) / t_lir,
            "native_ibp_fwd_bwd_s": t_nat_bwd, "lirpa_ibp_fwd_bwd_s": t_lir_bwd, "speedup_fwd_bwd": t_lir_bwd / t_nat_bwd,
            "max_bound_diff": diff, "ibp_verified": verified(l_nat).float().mean().item(),
        })  # fmt: skip
        print(
            f"batch {n}, eps {eps}: native IBP {t_nat * 1e3:.2f} ms ({len(x) / t_nat:,.0f} points/s), auto_LiRPA IBP "
            f"{t_lir * 1e3:.2f} ms ({len(x) / t_lir:,.0f} points/s): {t_lir / t_nat:.1f}x; with backward "
            f"{t_nat_bwd * 1e3:.2f} vs {t_lir_bwd * 1e3:.2f} ms: {t_lir_bwd / t_nat_bwd:.1f}x; max |diff| {diff:.2e}; "
            f"IBP verified {verified(l_nat).float().mean().item():.1%}"
        )

    # CROWN family on a smaller batch: time and verified accuracy vs IBP on the same points.
    xc, yc = w.data.x[: args.crown_n].to(device), w.data.y[: args.crown_n].to(device)
    spec_c = margin_spec(yc, w.num_classes)
    crown = []
    bounders = {m: LirpaBounder(model, xc, m) for m in ("crown-ibp", "crown")}
    for eps in args.eps:
        with torch.no_grad():
            t_ibp, (l_ibp, _) = timed(lambda: ibp_bounds(model, xc, eps, "linf", spec_c), args.repeats, device)
        row = {"eps": eps, "n": len(xc), "ibp_s": t_ibp, "ibp_verified": verified(l_ibp).float().mean().item()}
        for m, b in bounders.items():
            t, (lower, _) = timed(lambda: b.bounds(xc, eps, "linf", spec_c, bound_upper=False), 0, device)
            row[f"{m}_s"] = t
            row[f"{m}_verified"] = verified(lower).float().mean().item()
        crown.append(row)
        print(
            f"eps {eps} (n={len(xc)}): IBP {t_ibp * 1e3:.2f} ms verified {row['ibp_verified']:.1%}; "
            f"CROWN-IBP {row['crown-ibp_s']:.2f} s verified {row['crown-ibp_verified']:.1%}; "
            f"CROWN {row['crown_s']:.2f} s verified {row['crown_verified']:.1%}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "device": str(device), "ibp": rows, "crown": crown}, f, indent=2)


if __name__ == "__main__":
    main()
