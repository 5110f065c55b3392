"""Small look-alikes of VNN-COMP benchmark categories (2021-2022), built on the spot.

Only `mnistfc` is on disk; these folders imitate the others closely enough to exercise what their
files contain: input shapes, exporter idioms (onnx.helper graphs written the way the competition's
files are, and `torch.onnx.export` at several opsets), activations and VNNLIB property shapes. The
weights are random (He-scaled), so the networks are not accurate classifiers; what matters is that
every instance has a KNOWN answer or none:

- `holds`: an L-inf box of radius eps around a point x0 and a margin m0 = y_a(x0) - y_b(x0) > 0
  with eps < m0 / (2 L), L an upper bound of the network's L-inf -> L-inf Lipschitz constant
  (the product of the layers' induced norms: max row sum of |W| for a linear map, max over output
  channels of the kernel's |w| sum for a convolution, |gamma| / sqrt(var + eps) for batch norm,
  1 for ReLU, tanh and max/average pooling, 1/4 for sigmoid). Every output moves by at most L eps
  inside the box, so no input violates the property: a proof, not a guess.
- `violated`: a box built around a point x1 (not its centre) whose outputs, computed by
  onnxruntime, meet the violation condition, so a counterexample exists.
- `None`: larger boxes whose answer we do not know; only soundness can be checked (a `holds`
  must survive random sampling, a `violated` must come with a confirmed counterexample).

`build(category, folder)` writes the networks, properties and `instances.csv` and returns the
instances with their expected answers; `CATEGORIES` lists the builders.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass
class Lookalike:
    network: Path
    property: Path
    timeout: float
    expected: str | None  # "holds", "violated" or None (unknown)


# -- networks ------------------------------------------------------------------------------------


class Normalize(nn.Module):
    """(x - mean) / std with per-channel (or per-input) constants, as the competition's files do."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return (x - self.mean) / self.std


class Residual(nn.Module):
    def __init__(self, body: nn.Module, skip: nn.Module | None = None):
        super().__init__()
        self.body, self.skip = body, skip if skip is not None else nn.Identity()

    def forward(self, x):
        return self.body(x) + self.skip(x)


class FlattenView(nn.Module):
    """x.reshape(x.size(0), -1): what the TorchScript exporter writes as Shape/Gather/Unsqueeze/Concat/Reshape."""

    def forward(self, x):
        return x.reshape(x.size(0), -1)


class NHWC(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


class NCHW(nn.Module):
    def forward(self, x):
        return x.permute(0, 3, 1, 2)


def lipschitz(m: nn.Module) -> float:
    """An upper bound of the L-inf -> L-inf Lipschitz constant of `m` (see the module docstring)."""
    if isinstance(m, nn.Sequential):
        return math.prod(lipschitz(c) for c in m)
    if isinstance(m, Residual):
        return lipschitz(m.body) + lipschitz(m.skip)
    if isinstance(m, nn.Linear):
        return float(m.weight.detach().abs().sum(1).max())
    if isinstance(m, nn.Conv2d):
        return float(m.weight.detach().abs().flatten(1).sum(1).max())
    if isinstance(m, nn.BatchNorm2d) or isinstance(m, nn.BatchNorm1d):
        return float((m.weight / torch.sqrt(m.running_var + m.eps)).detach().abs().max())
    if isinstance(m, Normalize):
        return float((1 / m.std).abs().max())
    if isinstance(m, nn.Sigmoid):
        return 0.25
    if isinstance(m, (nn.ReLU, nn.Tanh, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, FlattenView, nn.Identity, nn.Dropout,
                      NHWC, NCHW)):
        return 1.0
    raise TypeError(f"no Lipschitz bound for {type(m).__name__}")


def linear_radius(model: nn.Module, x0: np.ndarray, shape: tuple[int, ...]) -> float:
    """The L-inf radius at which the first-order model of the top-two margin reaches zero,
    margin / ||grad margin||_1: boxes well inside it defeat attacks, yet bounds need real work."""
    x = torch.tensor(x0, dtype=torch.float32).reshape(1, *shape).requires_grad_(True)
    y = model(x)[0]
    top = torch.topk(y, 2).indices
    m = y[top[0]] - y[top[1]]
    (g,) = torch.autograd.grad(m, x)
    return float(m.detach() / g.abs().sum())


def _init(model: nn.Module, seed: int) -> nn.Module:
    """He-scaled random weights and non-trivial batch-norm statistics, deterministic per seed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model.eval()


def export(model: nn.Module, shape: tuple[int, ...], path: Path, opset: int, **kw) -> Path:
    """torch.onnx.export with the TorchScript exporter (one file; what 2021-2022 entries used)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), torch.zeros(1, *shape), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["output"], **kw)
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def save_graph(path: Path, nodes, inits, in_shape, out_shape, opset: int = 13, dtype=TensorProto.FLOAT,
               in_name: str = "input", out_name: str = "output", out_dtype=None) -> Path:
    """One input and one output (`out_dtype` defaults to the input's `dtype`), checked by onnx."""
    out_dtype = dtype if out_dtype is None else out_dtype
    graph = helper.make_graph(nodes, "lookalike", [helper.make_tensor_value_info(in_name, dtype, list(in_shape))],
                              [helper.make_tensor_value_info(out_name, out_dtype, list(out_shape))], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def t(name: str, a) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a), name)


def np32(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().astype(np.float32)


# -- evaluation with the reference runtime ----------------------------------------------------------


def ort_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    """The file's outputs for points x (B, n_inputs), one point at a time, by onnxruntime."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    s = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    return np.stack([np.asarray(s.run(None, {inp.name: xi.reshape(shape).astype(dtype)})[0], np.float64).reshape(-1)
                     for xi in np.atleast_2d(x)])


# -- properties ------------------------------------------------------------------------------------


def vnnlib(lower, upper, n_out: int, output: str) -> str:
    lines = [f"; look-alike property, {len(lower)} inputs, {n_out} outputs"]
    lines += [f"(declare-const X_{i} Real)" for i in range(len(lower))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, (lo, hi) in enumerate(zip(lower, upper)):
        lines += [f"(assert (>= X_{i} {float(lo)!r}))", f"(assert (<= X_{i} {float(hi)!r}))"]
    return "\n".join(lines + [output]) + "\n"


def one_vs_all(label: int, n_out: int) -> str:
    """Violated iff some other output is at least the label's (VNN-COMP's robustness property)."""
    return "(assert (or\n" + "\n".join(f"  (and (>= Y_{j} Y_{label}))" for j in range(n_out) if j != label) + "\n))"


def one_vs_one(label: int, other: int) -> str:
    """Violated iff output `other` is at least the label's (oval21 / cifar2020 style, one target)."""
    return f"(assert (<= Y_{label} Y_{other}))"


class Writer:
    """Collects one category's instances and writes its instances.csv."""

    def __init__(self, folder: Path, seed: int):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.items: list[Lookalike] = []
        self.rng = np.random.default_rng(seed)

    def add(self, net: Path, name: str, text: str, timeout: float, expected: str | None) -> None:
        spec = self.folder / f"{name}.vnnlib"
        spec.write_text(text)
        self.items.append(Lookalike(net, spec, timeout, expected))

    def robustness(self, net: Path, L: float, x0: np.ndarray, lo: float, hi: float, tag: str, *,
                   timeout: float = 5.0, style: str = "all", big_eps: float | None = None,
                   model: nn.Module | None = None, shape: tuple[int, ...] | None = None) -> None:
        """A provable `holds` (eps from the Lipschitz bound), a `violated` built from a point, and
        (big_eps) one instance with an unknown answer, all around x0."""
        y0 = ort_outputs(net, x0)[0]
        n_out = len(y0)
        order = np.argsort(-y0)
        label, runner_up = int(order[0]), int(order[1])
        margin = float(y0[label] - y0[runner_up])
        eps = 0.4 * margin / L
        out = one_vs_all(label, n_out) if style == "all" else one_vs_one(label, runner_up)
        box = (np.clip(x0 - eps, lo, hi), np.clip(x0 + eps, lo, hi))
        self.add(net, f"{tag}_holds", vnnlib(*box, n_out, out), timeout, "holds")
        # violated: x0 itself violates "label is not the top", placed off the box's centre
        w = 0.02 * (hi - lo)
        box_v = (np.clip(x0 - w * self.rng.uniform(0.2, 1.0, x0.shape), lo, hi),
                 np.clip(x0 + w * self.rng.uniform(0.2, 1.0, x0.shape), lo, hi))
        target = runner_up
        out_v = one_vs_all(target, n_out) if style == "all" else one_vs_one(target, label)
        self.add(net, f"{tag}_violated", vnnlib(*box_v, n_out, out_v), timeout, "violated")
        # unknown answers: the fixed radius given, and 10x / 100x the provable one (where IBP's
        # looseness shows and CROWN, alpha-CROWN and branch and bound have work)
        radii = [10 * eps, 100 * eps]
        if model is not None:  # near the margin's first-order reach: attacks and bounds both have work
            r = linear_radius(model, x0, shape)
            radii = [10 * eps, 0.3 * r, 0.8 * r]
        for k, e in enumerate(([big_eps] if big_eps is not None else []) + radii):
            box_u = (np.clip(x0 - e, lo, hi), np.clip(x0 + e, lo, hi))
            self.add(net, f"{tag}_open{k}", vnnlib(*box_u, n_out, out), timeout, None)

    def write_csv(self) -> Path:
        path = self.folder / "instances.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            for it in self.items:
                w.writerow([it.network.name, it.property.name, f"{it.timeout:g}"])
        return path


# -- categories ------------------------------------------------------------------------------------


def acasxu(folder: Path, seed: int = 0) -> list[Lookalike]:
    """5 inputs, input normalisation as Sub/Div constants, 6 x 50 ReLU layers, 5 outputs (advisories,
    the minimum is the advice). Two files: MatMul + Add with input (1, 1, 1, 5) as the 2021 files,
    and Gemm with input (1, 5). Properties: "y0 is not the minimum" style disjunctions, sub-boxes,
    and a property whose input region is a disjunction of two boxes."""
    w = Writer(folder, seed)
    mean = torch.tensor([19791.0, 0.0, 0.0, 650.0, 600.0])
    rng_ = torch.tensor([60261.0, 6.28, 6.28, 1100.0, 1200.0])
    lo = np.array([0.0, -3.141593, -3.141593, 100.0, 0.0])
    hi = np.array([60760.0, 3.141593, 3.141593, 1200.0, 1200.0])
    layers: list[nn.Module] = []
    sizes = [5] + [50] * 6 + [5]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    mlp = _init(nn.Sequential(*layers[:-1]), seed)
    with torch.no_grad():  # smaller weights keep the 6-layer outputs O(1) and the Lipschitz bound modest
        for m in mlp:
            if isinstance(m, nn.Linear):
                m.weight.mul_(0.6)
    net = nn.Sequential(Normalize(mean, rng_), mlp)
    L = lipschitz(net)

    # (a) MatMul + Add, input (1, 1, 1, 5), Sub/Div normalisation, Flatten, as the 2021 files
    nodes = [helper.make_node("Sub", ["input", "mean"], ["s"]), helper.make_node("Div", ["s", "range"], ["n"]),
             helper.make_node("Flatten", ["n"], ["h0"], axis=1)]
    inits = [t("mean", np32(mean).reshape(1, 1, 1, 5)), t("range", np32(rng_).reshape(1, 1, 1, 5))]
    k = 0
    for i, m in enumerate(mlp):
        if isinstance(m, nn.Linear):
            last = i == len(mlp) - 1
            inits += [t(f"W{k}", np32(m.weight.T)), t(f"B{k}", np32(m.bias))]
            nodes += [helper.make_node("MatMul", [f"h{k}", f"W{k}"], [f"m{k}"]),
                      helper.make_node("Add", [f"m{k}", f"B{k}"], ["output" if last else f"a{k}"])]
            if not last:
                nodes.append(helper.make_node("Relu", [f"a{k}"], [f"h{k + 1}"]))
            k += 1
    net_a = save_graph(folder / "ACASXU_run2a_1_1_batch_2000.onnx", nodes, inits, (1, 1, 1, 5), (1, 5), opset=11)
    # (b) Gemm, input (1, 5)
    net_b = export(net, (5,), folder / "ACASXU_gemm_1_2.onnx", opset=13)

    for net_path, tag in ((net_a, "a"), (net_b, "b")):
        x0 = lo + (hi - lo) * w.rng.uniform(0.3, 0.7, 5)
        y0 = ort_outputs(net_path, x0)[0]
        order = np.argsort(y0)  # ascending: the advice is the minimum
        best, second = int(order[0]), int(order[1])
        margin = float(y0[second] - y0[best])
        eps_x = 0.4 * margin / L  # in normalised units times range: box radius per input below
        box = (np.maximum(x0 - eps_x * 0.999, lo), np.minimum(x0 + eps_x * 0.999, hi))
        # violation: some other advisory is <= the best one ("best is not the minimum" fails)
        out = "(assert (or\n" + "\n".join(f"  (and (<= Y_{j} Y_{best}))" for j in range(5) if j != best) + "\n))"
        w.add(net_path, f"prop_{tag}_min_holds", vnnlib(*box, 5, out), 5, "holds")
        # violated: "best is never the minimum" on a sub-box containing x0 (ACAS prop 3 style)
        out_v = "(assert (and " + " ".join(f"(<= Y_{best} Y_{j})" for j in range(5) if j != best) + "))"
        wide = 0.01 * (hi - lo)
        box_v = (np.maximum(x0 - wide * w.rng.uniform(0.2, 1, 5), lo), np.minimum(x0 + wide * w.rng.uniform(0.2, 1, 5), hi))
        w.add(net_path, f"prop_{tag}_notmin_violated", vnnlib(*box_v, 5, out_v), 5, "violated")
        # two input boxes as a disjunction over X (one provably safe, one around x0 where it is violated)
        safe, bad = box, box_v
        xs = "(assert (or\n" + "\n".join("  " + _box_text(b) for b in (safe, bad)) + "\n))"
        decls = "\n".join([f"(declare-const X_{i} Real)" for i in range(5)] + [f"(declare-const Y_{j} Real)" for j in range(5)])
        w.add(net_path, f"prop_{tag}_twoboxes_violated", f"{decls}\n{xs}\n{out_v}\n", 5, "violated")
        mid = (safe[0][0] + safe[1][0]) / 2  # the safe box cut in two along X_0: both halves hold
        halves = ((safe[0], np.concatenate([[mid], safe[1][1:]])), (np.concatenate([[mid], safe[0][1:]]), safe[1]))
        xs_safe = "(assert (or\n" + "\n".join("  " + _box_text(b) for b in halves) + "\n))"
        w.add(net_path, f"prop_{tag}_twoboxes_holds", f"{decls}\n{xs_safe}\n{out}\n", 5, "holds")
        # an ACAS-sized sub-box with an unknown answer (input splitting's home ground)
        sub = (np.maximum(x0 - 0.05 * (hi - lo), lo), np.minimum(x0 + 0.05 * (hi - lo), hi))
        w.add(net_path, f"prop_{tag}_sub_open", vnnlib(*sub, 5, out), 5, None)
    w.write_csv()
    return w.items


def _box_text(b) -> str:
    return "(and " + " ".join(f"(>= X_{i} {float(b[0][i])!r}) (<= X_{i} {float(b[1][i])!r})" for i in range(len(b[0]))) + ")"


def _cifar_mean_std():
    return torch.tensor([0.4914, 0.4822, 0.4465]).reshape(3, 1, 1), torch.tensor([0.2023, 0.1994, 0.2010]).reshape(3, 1, 1)


def cifar(folder: Path, seed: int = 1) -> list[Lookalike]:
    """cifar2020 / oval21 / marabou-cifar10: 3x32x32 conv nets with per-channel Sub/Div
    normalisation, strided padded Conv + ReLU, a flatten written as Shape/Gather/Unsqueeze/Concat/
    Reshape (TorchScript's `x.view(x.size(0), -1)` without constant folding) or Flatten, Gemm
    layers; one-vs-all and one-vs-one properties."""
    w = Writer(folder, seed)
    mean, std = _cifar_mean_std()
    nets = {
        "cifar10_2_255_simplified": (nn.Sequential(
            Normalize(mean, std), nn.Conv2d(3, 8, 4, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 4, 2, 1), nn.ReLU(),
            FlattenView(), nn.Linear(16 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 10)), 11, False),
        "cifar_base_kw": (nn.Sequential(
            nn.Conv2d(3, 8, 4, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 4, 2, 1), nn.ReLU(), nn.Flatten(),
            nn.Linear(8 * 8 * 8, 50), nn.ReLU(), nn.Linear(50, 10)), 13, True),
        "marabou_cifar10_small": (nn.Sequential(
            Normalize(mean, std), nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1), nn.ReLU(),
            FlattenView(), nn.Linear(4 * 8 * 8, 20), nn.ReLU(), nn.Linear(20, 10)), 17, False),
    }
    for k, (name, (model, opset, fold)) in enumerate(nets.items()):
        _init(model, seed + k)
        path = export(model, (3, 32, 32), folder / f"{name}.onnx", opset, do_constant_folding=fold)
        x0 = w.rng.uniform(0, 1, 3 * 32 * 32)
        w.robustness(path, lipschitz(model), x0, 0.0, 1.0, f"{name}_img{k}", style="all" if k != 1 else "one",
                     big_eps=2 / 255 if k == 0 else None, model=model, shape=(3, 32, 32))
    # oval21's files, written by hand: per-channel Sub/Div, Conv, and the flatten as the
    # Shape -> Gather -> Unsqueeze -> Concat -> Reshape chain of older exporters
    model = _init(nn.Sequential(Normalize(mean, std), nn.Conv2d(3, 8, 4, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 4, 2, 1),
                                nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 100), nn.ReLU(), nn.Linear(100, 10)), seed + 7)
    c1, c2, l1, l2 = model[1], model[3], model[6], model[8]
    nodes = [helper.make_node("Sub", ["input", "mean"], ["s"]), helper.make_node("Div", ["s", "std"], ["n"]),
             helper.make_node("Conv", ["n", "c1w", "c1b"], ["c1"], kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "c2w", "c2b"], ["c2"], kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Shape", ["r2"], ["shape"]), helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
             helper.make_node("Unsqueeze", ["batch"], ["batch1"], axes=[0]),
             helper.make_node("Concat", ["batch1", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["r2", "target"], ["flat"]),
             helper.make_node("Gemm", ["flat", "l1w", "l1b"], ["g1"], transB=1), helper.make_node("Relu", ["g1"], ["r3"]),
             helper.make_node("Gemm", ["r3", "l2w", "l2b"], ["output"], transB=1)]
    inits = [t("mean", np32(mean).reshape(1, 3, 1, 1)), t("std", np32(std).reshape(1, 3, 1, 1)),
             t("c1w", np32(c1.weight)), t("c1b", np32(c1.bias)), t("c2w", np32(c2.weight)), t("c2b", np32(c2.bias)),
             t("zero", np.array(0, np.int64)), t("minus1", np.array([-1], np.int64)),
             t("l1w", np32(l1.weight)), t("l1b", np32(l1.bias)), t("l2w", np32(l2.weight)), t("l2b", np32(l2.bias))]
    path = save_graph(folder / "cifar_wide_kw.onnx", nodes, inits, (1, 3, 32, 32), (1, 10), opset=11)
    w.robustness(path, lipschitz(model), w.rng.uniform(0, 1, 3 * 32 * 32), 0.0, 1.0, "cifar_wide_kw_img3", style="one",
                 big_eps=2 / 255, model=model, shape=(3, 32, 32))
    # ERAN's conversions from TensorFlow flatten in NHWC order: Transpose(0, 2, 3, 1) before Reshape
    model = _init(nn.Sequential(Normalize(mean, std), nn.Conv2d(3, 8, 4, 2, 1), nn.ReLU(), NHWC(),
                                FlattenView(), nn.Linear(8 * 16 * 16, 50), nn.ReLU(), nn.Linear(50, 10)), seed + 8)
    path = export(model, (3, 32, 32), folder / "convSmallRELU__Point_transposed.onnx", 12)
    w.robustness(path, lipschitz(model), w.rng.uniform(0, 1, 3 * 32 * 32), 0.0, 1.0, "eran_transposed_img4",
                 model=model, shape=(3, 32, 32))
    # Keras through tf2onnx (marabou-cifar10): an NHWC input, Transpose to NCHW for the Conv and back,
    # Reshape with a 0 (copy the batch) and -1, MatMul + Add
    conv, fc1, fc2 = nn.Conv2d(3, 4, 3, 2, 1), nn.Linear(4 * 16 * 16, 32), nn.Linear(32, 10)
    ref = _init(nn.Sequential(NCHW(), conv, nn.ReLU(), NHWC(), FlattenView(), fc1, nn.ReLU(), fc2), seed + 9)
    nodes = [helper.make_node("Transpose", ["input_1:0"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "cw", "cb"], ["c"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Transpose", ["r"], ["nhwc"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["nhwc", "flat_shape"], ["f"]),
             helper.make_node("MatMul", ["f", "w1"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["m2"]),
             helper.make_node("Add", ["m2", "b2"], ["dense_2"])]
    inits = [t("cw", np32(conv.weight)), t("cb", np32(conv.bias)), t("flat_shape", np.array([0, -1], np.int64)),
             t("w1", np32(fc1.weight.T)), t("b1", np32(fc1.bias)), t("w2", np32(fc2.weight.T)), t("b2", np32(fc2.bias))]
    path = save_graph(folder / "marabou_cifar10_keras_nhwc.onnx", nodes, inits, ("unk__6", 32, 32, 3), ("unk__7", 10),
                      opset=13, in_name="input_1:0", out_name="dense_2")
    w.robustness(path, lipschitz(ref), w.rng.uniform(0, 1, 32 * 32 * 3), 0.0, 1.0, "keras_nhwc_img5",
                 model=ref, shape=(32, 32, 3))
    w.write_csv()
    return w.items


def cifar_big(folder: Path, seed: int = 8) -> list[Lookalike]:
    """A cifar2020 ConvBig-sized net (4 convolutions of 32-64 channels, two 512-wide layers: about
    60,000 ReLUs) at eps 2/255 and 8/255 with 5 s timeouts: the stages must stop on time."""
    w = Writer(folder, seed)
    mean, std = _cifar_mean_std()
    model = _init(nn.Sequential(
        Normalize(mean, std), nn.Conv2d(3, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 32, 4, 2, 1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(), nn.Conv2d(64, 64, 4, 2, 1), nn.ReLU(), FlattenView(),
        nn.Linear(64 * 8 * 8, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)), seed)
    path = export(model, (3, 32, 32), folder / "convBigRELU__PGD.onnx", 11, do_constant_folding=False)
    x0 = w.rng.uniform(0, 1, 3 * 32 * 32)
    y0 = ort_outputs(path, x0)[0]
    label = int(np.argmax(y0))
    for k, eps in enumerate((0.3 * linear_radius(model, x0, (3, 32, 32)), 0.8 * linear_radius(model, x0, (3, 32, 32)))):
        box = (np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1))
        w.add(path, f"convbig_eps{k}", vnnlib(*box, 10, one_vs_all(label, 10)), 5, None)
    w.write_csv()
    return w.items


def eran(folder: Path, seed: int = 2) -> list[Lookalike]:
    """ERAN's MNIST MLPs with Sigmoid and Tanh activations (input (1, 784), Sub/Div normalisation,
    MatMul + Add): bounds go through auto_LiRPA or native IBP, not the ReLU engines."""
    w = Writer(folder, seed)
    for k, act in enumerate((nn.Sigmoid, nn.Tanh)):
        model = _init(nn.Sequential(Normalize(torch.tensor(0.1307), torch.tensor(0.3081)), nn.Linear(784, 40), act(),
                                    nn.Linear(40, 40), act(), nn.Linear(40, 10)), seed + k)
        nodes = [helper.make_node("Sub", ["input", "mean"], ["s"]), helper.make_node("Div", ["s", "std"], ["h0"])]
        inits = [t("mean", np.float32(0.1307)), t("std", np.float32(0.3081))]
        lin = [m for m in model if isinstance(m, nn.Linear)]
        for i, m in enumerate(lin):
            last = i == len(lin) - 1
            inits += [t(f"W{i}", np32(m.weight.T)), t(f"B{i}", np32(m.bias))]
            nodes += [helper.make_node("MatMul", [f"h{i}", f"W{i}"], [f"m{i}"]),
                      helper.make_node("Add", [f"m{i}", f"B{i}"], ["output" if last else f"a{i}"])]
            if not last:
                nodes.append(helper.make_node(act.__name__, [f"a{i}"], [f"h{i + 1}"]))
        name = "ffnnSIGMOID__Point_2_40" if k == 0 else "ffnnTANH__Point_2_40"
        path = save_graph(folder / f"{name}.onnx", nodes, inits, (1, 784), (1, 10), opset=12)
        x0 = w.rng.uniform(0, 1, 784)
        w.robustness(path, lipschitz(model), x0, 0.0, 1.0, f"{name}_img{k}", big_eps=0.015, model=model, shape=(784,))
    w.write_csv()
    return w.items


# Activations with their Lipschitz constants (sup |f'|) and whether the bound engines bound them
# (native IBP: monotone ones; auto_LiRPA: SiLU's sigmoid * x; neither: erf in GELU, HardSwish's product).
ACTIVATIONS = {
    "leakyrelu": (lambda: nn.LeakyReLU(0.1), 1.0, True), "elu": (nn.ELU, 1.0, True),
    "softplus": (nn.Softplus, 1.0, True), "silu": (nn.SiLU, 1.1, True),
    "gelu": (nn.GELU, 1.13, False), "hardswish": (nn.Hardswish, 1.5, False),
}


def activations(folder: Path, seed: int = 9) -> list[Lookalike]:
    """Small MLPs with the other activations exporters write (LeakyRelu, Elu, Softplus; SiLU as
    Sigmoid * x, GELU as x * (1 + Erf(x / sqrt 2)) / 2, HardSwish as HardSigmoid * x before opset 14).
    Where no engine bounds the network, the provable `holds` has no expected answer (`unknown` is
    right); violations must still be found and confirmed."""
    w = Writer(folder, seed)
    for k, (name, (act, lip, bounded)) in enumerate(ACTIVATIONS.items()):
        model = _init(nn.Sequential(nn.Linear(8, 16), act(), nn.Linear(16, 16), act(), nn.Linear(16, 3)), seed + k)
        path = export(model, (8,), folder / f"mlp_{name}.onnx", 13)
        L = lipschitz(model[0]) * lip * lipschitz(model[2]) * lip * lipschitz(model[4])
        before = len(w.items)
        w.robustness(path, L, w.rng.uniform(-1, 1, 8), -1.0, 1.0, f"{name}", timeout=3, model=model, shape=(8,))
        if not bounded:
            w.items[before].expected = None
    w.write_csv()
    return w.items


def verivital(folder: Path, seed: int = 3) -> list[Lookalike]:
    """verivital's MNIST CNNs: Conv + ReLU + MaxPool 2x2 and AveragePool, and a Conv + BatchNormalization
    (inference) net; input (1, 1, 28, 28) in [0, 1]."""
    w = Writer(folder, seed)
    nets = {
        "Convnet_maxpool": nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, 1, 1),
                                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 7 * 7, 10)),
        "Convnet_avgpool": nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(4, 4, 3, 1, 1),
                                         nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 7 * 7, 10)),
        "Convnet_bn": nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 3, 2, 1),
                                    nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 7 * 7, 10)),
    }
    for k, (name, model) in enumerate(nets.items()):
        _init(model, seed + k)
        # do_constant_folding=False keeps BatchNormalization nodes (folding merges them into the Conv)
        path = export(model, (1, 28, 28), folder / f"{name}.onnx", 11 + 2 * k, do_constant_folding=False)
        x0 = w.rng.uniform(0, 1, 784)
        w.robustness(path, lipschitz(model), x0, 0.0, 1.0, f"{name}_img{k}", big_eps=0.02 if k == 0 else None,
                     model=model, shape=(1, 28, 28))
    w.write_csv()
    return w.items


def rl_benchmarks(folder: Path, seed: int = 4) -> list[Lookalike]:
    """rl_benchmarks (cartpole, lunarlander, dubinsrejoin): 4-8 inputs, small ReLU MLPs with a 1-2
    output head; properties are one half-space on one output, `(assert (<= Y_0 c))`."""
    w = Writer(folder, seed)
    for k, (n_in, n_out) in enumerate(((4, 2), (8, 1))):
        model = _init(nn.Sequential(nn.Linear(n_in, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, n_out)),
                      seed + k)
        path = export(model, (n_in,), folder / f"{'cartpole' if k == 0 else 'lunarlander'}.onnx", 12 + 3 * k)
        L = lipschitz(model)
        x0 = w.rng.uniform(-1, 1, n_in)
        y0 = ort_outputs(path, x0)[0]
        eps = 0.2
        c = y0[0] - 1.5 * L * eps - 0.1  # every output in the box stays above c: `Y_0 <= c` is impossible
        box = (x0 - eps, x0 + eps)
        w.add(path, f"rl{k}_halfspace_holds", vnnlib(*box, n_out, f"(assert (<= Y_0 {float(c)!r}))"), 3, "holds")
        x1 = x0 + w.rng.uniform(-0.1, 0.1, n_in)
        c1 = ort_outputs(path, x1)[0][0] + 1e-3  # x1 meets Y_0 <= c1
        w.add(path, f"rl{k}_halfspace_violated", vnnlib(*box, n_out, f"(assert (<= Y_0 {float(c1)!r}))"), 3, "violated")
        c2 = y0[0] - 0.3 * L * eps
        w.add(path, f"rl{k}_halfspace_open", vnnlib(*box, n_out, f"(assert (<= Y_0 {float(c2)!r}))"), 3, None)
        # one `or` of (input box and output condition) pairs, as reachability benchmarks write them;
        # the condition is linear with coefficients: violated on the second box only (x1 in it)
        lo2, hi2 = np.minimum(x1 - 0.01, x0 - eps), np.maximum(x1 + 0.01, x0 + eps)
        pairs = [(box, f"(<= (* 2.0 Y_0) {2 * float(c)!r})"), ((lo2, hi2), f"(<= (+ Y_0 (* -1 {float(c1)!r})) 0)")]
        decls = "\n".join([f"(declare-const X_{i} Real)" for i in range(n_in)] + [f"(declare-const Y_{j} Real)" for j in range(n_out)])
        body = "\n".join(f"  (and {_box_text(b)[5:-1]} {cond})" for b, cond in pairs)
        w.add(path, f"rl{k}_pairs_violated", f"{decls}\n(assert (or\n{body}\n))\n", 3, "violated")
        body = "\n".join(f"  (and {_box_text(b)[5:-1]} {cond})" for b, cond in pairs[:1] * 2)
        w.add(path, f"rl{k}_pairs_holds", f"{decls}\n(assert (or\n{body}\n))\n", 3, "holds")
    # dubinsrejoin / nn4sys style: the 8 inputs cut into parts (Split, and Slice) feeding two heads,
    # concatenated before the last layer
    heads = [_init(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU()), seed + 10 + h) for h in range(2)]
    last = _init(nn.Linear(16, 2), seed + 12)
    L = lipschitz(last) * max(lipschitz(h) for h in heads)
    for k, cut in enumerate(("Split", "Slice")):
        if cut == "Split":
            nodes = [helper.make_node("Split", ["input", "sizes"], ["xa", "xb"], axis=1)]
            inits = [t("sizes", np.array([4, 4], np.int64))]
        else:
            nodes = [helper.make_node("Slice", ["input", "s0", "e0", "ax"], ["xa"]),
                     helper.make_node("Slice", ["input", "s1", "e1", "ax"], ["xb"])]
            inits = [t("s0", np.array([0], np.int64)), t("e0", np.array([4], np.int64)), t("ax", np.array([1], np.int64)),
                     t("s1", np.array([4], np.int64)), t("e1", np.array([2**62], np.int64))]  # an end past the axis, clamped
        for h, src in enumerate(("xa", "xb")):
            l1, l2 = heads[h][0], heads[h][2]
            inits += [t(f"h{h}w1", np32(l1.weight)), t(f"h{h}b1", np32(l1.bias)), t(f"h{h}w2", np32(l2.weight)),
                      t(f"h{h}b2", np32(l2.bias))]
            nodes += [helper.make_node("Gemm", [src, f"h{h}w1", f"h{h}b1"], [f"h{h}z1"], transB=1),
                      helper.make_node("Relu", [f"h{h}z1"], [f"h{h}r1"]),
                      helper.make_node("Gemm", [f"h{h}r1", f"h{h}w2", f"h{h}b2"], [f"h{h}z2"], transB=1),
                      helper.make_node("Relu", [f"h{h}z2"], [f"h{h}r2"])]
        nodes += [helper.make_node("Concat", ["h0r2", "h1r2"], ["cat"], axis=1),
                  helper.make_node("Gemm", ["cat", "lw", "lb"], ["output"], transB=1)]
        inits += [t("lw", np32(last.weight)), t("lb", np32(last.bias))]
        path = save_graph(folder / f"dubinsrejoin_{cut.lower()}.onnx", nodes, inits, (1, 8), (1, 2), opset=13)
        w.robustness(path, L, w.rng.uniform(-1, 1, 8), -1.0, 1.0, f"dubins_{cut.lower()}", timeout=3)
    w.write_csv()
    return w.items


def sri_resnet(folder: Path, seed: int = 5) -> list[Lookalike]:
    """sri_resnet_a/b: residual blocks (Add of two branches) with BatchNormalization, 3x32x32 inputs
    normalised per channel."""
    w = Writer(folder, seed)
    mean, std = _cifar_mean_std()
    block = lambda c: Residual(nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU(),  # noqa: E731
                                             nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c)))
    model = _init(nn.Sequential(Normalize(mean, std), nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), block(8),
                                nn.ReLU(), Residual(nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                                                  nn.Conv2d(8, 8, 3, 1, 1)), nn.Conv2d(8, 8, 1, 2, 0)),
                                nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)), seed)
    path = export(model, (3, 32, 32), folder / "resnet_2b.onnx", 13, do_constant_folding=False)
    x0 = w.rng.uniform(0, 1, 3 * 32 * 32)
    w.robustness(path, lipschitz(model), x0, 0.0, 1.0, "resnet_2b_img0", big_eps=1 / 255, model=model, shape=(3, 32, 32))
    w.write_csv()
    return w.items


def idioms(folder: Path, seed: int = 6) -> list[Lookalike]:
    """Exporter idioms seen across the competition's files, one small net each: Dropout (inference
    no-op) and Identity nodes, an NHWC input transposed to NCHW, Flatten with axis, MatMul with a
    1-D bias Add, weights as Constant nodes, initializer names with path-like characters, a float64
    model, and an output of shape (1, 1, 10)."""
    w = Writer(folder, seed)
    mlp = _init(nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10)), seed)
    W0, B0, W1, B1 = (np32(p) for p in (mlp[0].weight, mlp[0].bias, mlp[2].weight, mlp[2].bias))
    L = lipschitz(mlp)

    def mlp_nodes(src: str, dst: str, const_nodes: bool = False, names=("W0", "B0", "W1", "B1"), dtype=np.float32):
        vals = [W0.T.astype(dtype), B0.astype(dtype), W1.T.astype(dtype), B1.astype(dtype)]
        if const_nodes:
            pre = [helper.make_node("Constant", [], [n], value=t(n + "_v", v)) for n, v in zip(names, vals)]
            inits = []
        else:
            pre, inits = [], [t(n, v) for n, v in zip(names, vals)]
        nodes = pre + [helper.make_node("MatMul", [src, names[0]], ["m0"]), helper.make_node("Add", ["m0", names[1]], ["a0"]),
                       helper.make_node("Dropout", ["a0"], ["d0"]), helper.make_node("Relu", ["d0"], ["h1"]),
                       helper.make_node("Identity", ["h1"], ["h1i"]),
                       helper.make_node("MatMul", ["h1i", names[2]], ["m1"]), helper.make_node("Add", ["m1", names[3]], [dst])]
        return nodes, inits

    # NHWC input (1, 4, 4, 3) -> Transpose to NCHW -> Flatten(axis=1)
    nodes, inits = mlp_nodes("f", "output")
    nodes = [helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Flatten", ["nchw"], ["f"], axis=1)] + nodes
    nets = [save_graph(folder / "nhwc_transpose.onnx", nodes, inits, (1, 4, 4, 3), (1, 10), opset=13)]
    # weights as Constant nodes, Flatten with axis=1 on (1, 3, 4, 4)
    nodes, inits = mlp_nodes("f", "output", const_nodes=True)
    nets.append(save_graph(folder / "constant_nodes.onnx", [helper.make_node("Flatten", ["input"], ["f"], axis=1)] + nodes,
                           inits, (1, 3, 4, 4), (1, 10), opset=11))
    # initializer names with path-like characters (as exporters of other frameworks write them)
    names = ("sequential/dense/MatMul/ReadVariableOp:0", "sequential/dense/BiasAdd/ReadVariableOp:0",
             "model.fc2.weight", "onnx::MatMul_12")
    nodes, inits = mlp_nodes("flat", "output", names=names)  # and a Flatten with a negative axis on (1, 1, 48)
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=-1)] + nodes
    nets.append(save_graph(folder / "odd_names.onnx", nodes, inits, (1, 1, 48), (1, 10), opset=13))
    # a float64 model
    nodes, inits = mlp_nodes("input", "output", dtype=np.float64)
    nets.append(save_graph(folder / "float64.onnx", nodes, inits, (1, 48), (1, 10), opset=13, dtype=TensorProto.DOUBLE))
    # output of shape (1, 1, 10): a Reshape at the end
    nodes, inits = mlp_nodes("input", "o2")
    nodes.append(helper.make_node("Reshape", ["o2", "oshape"], ["output"]))
    inits.append(t("oshape", np.array([1, 1, 10], np.int64)))
    nets.append(save_graph(folder / "output_1x1x10.onnx", nodes, inits, (1, 48), (1, 1, 10), opset=13))
    # Gemm with transB=0, alpha and beta; normalisation as a constant-first Sub and a Mul by 1/std;
    # Cast (float -> float) and Squeeze/Unsqueeze of computed tensors; a tf2onnx-style input name
    half = np.float32(0.5)
    nodes = [helper.make_node("Sub", ["mean", "input:0"], ["neg"]), helper.make_node("Mul", ["neg", "minus_inv_std"], ["n"]),
             helper.make_node("Cast", ["n"], ["nc"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["nc", "ax1"], ["u"]), helper.make_node("Squeeze", ["u", "ax1"], ["sq"]),
             helper.make_node("Gemm", ["sq", "W0", "B0"], ["a0"], alpha=2.0, beta=1.0),
             helper.make_node("Relu", ["a0"], ["h1"]),
             helper.make_node("Gemm", ["h1", "W1", "B1"], ["output"], transB=1)]
    inits = [t("mean", np.full(48, 0.0, np.float32)), t("minus_inv_std", np.full(48, -1.0, np.float32)),
             t("ax1", np.array([1], np.int64)), t("W0", (W0.T * half).astype(np.float32)), t("B0", B0), t("W1", W1), t("B1", B1)]
    nets.append(save_graph(folder / "gemm_alpha_cast_squeeze.onnx", nodes, inits, (1, 48), (1, 10), opset=13,
                           in_name="input:0"))
    # MatMul straight on a (1, 1, 1, 48) input (no Flatten), bias Add with the constant first, a
    # symbolic batch dimension, Reshape to (-1, 10) at the end
    nodes = [helper.make_node("MatMul", ["input", "W0"], ["m0"]), helper.make_node("Add", ["B0", "m0"], ["a0"]),
             helper.make_node("Relu", ["a0"], ["h1"]), helper.make_node("MatMul", ["h1", "W1"], ["m1"]),
             helper.make_node("Add", ["m1", "B1"], ["o4"]), helper.make_node("Reshape", ["o4", "oshape"], ["output"])]
    inits = [t("W0", W0.T), t("B0", B0), t("W1", W1.T), t("B1", B1), t("oshape", np.array([-1, 10], np.int64))]
    nets.append(save_graph(folder / "matmul_4d_symbolic_batch.onnx", nodes, inits, ("N", 1, 1, 48), ("N", 10), opset=13))
    # an old-IR file whose weights are also listed as graph inputs, and Dropout with ratio and
    # training_mode inputs (opset 12+)
    nodes = [helper.make_node("MatMul", ["input", "W0"], ["m0"]), helper.make_node("Add", ["m0", "B0"], ["a0"]),
             helper.make_node("Dropout", ["a0", "ratio", "train"], ["d0"]), helper.make_node("Relu", ["d0"], ["h1"]),
             helper.make_node("MatMul", ["h1", "W1"], ["m1"]), helper.make_node("Add", ["m1", "B1"], ["output"])]
    inits = [t("W0", W0.T), t("B0", B0), t("W1", W1.T), t("B1", B1), t("ratio", np.float32(0.5)), t("train", np.bool_(False))]
    graph = helper.make_graph(nodes, "weights_as_inputs",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 48])]
                              + [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in inits],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 6
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "weights_as_inputs.onnx"))
    nets.append(folder / "weights_as_inputs.onnx")
    # weights in a side file (torch.onnx.export's default since torch 2.9), via onnx's own writer
    nodes, inits = mlp_nodes("input", "output")
    ext = save_graph(folder / "external_data.onnx", nodes, inits, (1, 48), (1, 10), opset=13)
    model = onnx.load(str(ext))
    onnx.save_model(model, str(ext), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="external_data.onnx.data", size_threshold=0)
    nets.append(ext)
    for k, path in enumerate(nets):
        x0 = w.rng.uniform(0, 1, 48)
        # the Lipschitz bound does not depend on the input layout: the first layer sees a permutation of x
        w.robustness(path, L, x0, 0.0, 1.0, f"{path.stem}", timeout=3)
    w.write_csv()
    return w.items


CATEGORIES: dict[str, Callable[[Path], list[Lookalike]]] = {
    "acasxu": acasxu, "cifar2020": cifar, "cifar2020_big": cifar_big, "eran": eran, "verivital": verivital, "rl_benchmarks": rl_benchmarks,
    "sri_resnet": sri_resnet, "idioms": idioms, "activations": activations,
}

UNKNOWN_ONLY = ("cifar2020_big",)  # categories without instances of known answer (they run to their timeouts)


def build(category: str, folder: Path) -> list[Lookalike]:
    return CATEGORIES[category](folder)


# -- judging a run ---------------------------------------------------------------------------------


def read_counterexample(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import re

    xs, ys = {}, {}
    for name, idx, val in re.findall(r"\(([XY])_(\d+)\s+([^\s()]+)\)", path.read_text()):
        (xs if name == "X" else ys)[int(idx)] = float(val)
    return np.array([xs[i] for i in range(len(xs))]), np.array([ys[i] for i in range(len(ys))])


def sampled_violation(item: Lookalike, samples: int = 256, seed: int = 0) -> bool:
    """Does any of `samples` random points (and the box's corners low/high) violate the property? By onnxruntime."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from robustcli.certify.vnnlib import read_vnnlib

    prop = read_vnnlib(item.property)
    rng = np.random.default_rng(seed)
    for case in prop.cases:
        lo, hi = case.lower.numpy(), case.upper.numpy()
        x = lo + (hi - lo) * rng.uniform(0, 1, (samples, len(lo)))
        x = np.concatenate([x, lo[None], hi[None], ((lo + hi) / 2)[None]])
        y = torch.from_numpy(ort_outputs(item.network, x))
        if bool(case.violated_by(y).any()):
            return True
    return False


def pgd_violation(item: Lookalike, steps: int = 100, restarts: int = 8, seed: int = 0) -> bool:
    """Does a plain sign-gradient descent on each disjunct's worst margin (max_k C_k y + d_k), from
    random starts in each box, reach a point onnxruntime confirms as a violation? Independent of the
    verifier's own attack; on the module converted from the file."""
    from robustcli.certify.onnx_import import onnx_to_torch
    from robustcli.certify.vnnlib import read_vnnlib

    conv = onnx_to_torch(item.network)
    model = conv.module.double()
    prop = read_vnnlib(item.property)
    g = torch.Generator().manual_seed(seed)
    for case in prop.cases:
        lo, hi = case.lower, case.upper
        for o in case.disjuncts:
            x = lo + (hi - lo) * torch.rand(restarts, len(lo), generator=g, dtype=torch.float64)
            step = (hi - lo) / 8
            for k in range(steps):
                x.requires_grad_(True)
                y = model(x.reshape(restarts, *conv.input_shape)).reshape(restarts, -1)
                worst = (y @ o.C.T + o.d).max(1).values
                (grad,) = torch.autograd.grad(worst.sum(), x)
                with torch.no_grad():
                    x = torch.minimum(torch.maximum(x - step * (1 - k / steps) * grad.sign(), lo), hi)
            y = torch.from_numpy(ort_outputs(item.network, x.detach().float().double().clamp(lo, hi).numpy()))
            if bool(case.violated_by(y).any()):
                return True
    return False


def judge(items: list[Lookalike], results_csv: Path, ce_dir: Path | None) -> list[str]:
    """Problems of one run: a missing or malformed row, an unsound answer, a wrong known answer
    (a decided instance answered otherwise is not a problem; only a contradiction is), an
    unconfirmed counterexample, an overrun timeout."""
    from robustcli.certify.vnnlib import read_vnnlib

    problems: list[str] = []
    rows = [r for r in csv.reader(results_csv.open()) if r]
    if len(rows) != len(items):
        problems.append(f"{len(rows)} result rows for {len(items)} instances")
    by_key = {(r[1], r[2]): r for r in rows}
    for it in items:
        key = (f"./{it.network.name}", f"./{it.property.name}")
        row = by_key.get(key)
        if row is None:
            problems.append(f"{it.property.name}: no result row")
            continue
        if len(row) != 6:
            problems.append(f"{it.property.name}: row {row} does not have 6 columns")
            continue
        result, seconds = row[4], float(row[5])
        float(row[3])
        if result not in ("holds", "violated", "unknown", "timeout", "error"):
            problems.append(f"{it.property.name}: result {result!r}")
        if seconds > it.timeout + max(1.0, 0.05 * it.timeout):
            problems.append(f"{it.property.name}: {seconds:.2f}s for a {it.timeout:g}s timeout")
        if result == "holds" and it.expected == "violated":
            problems.append(f"{it.property.name}: UNSOUND holds where a counterexample exists")
        if result == "holds" and it.expected is None and (sampled_violation(it) or pgd_violation(it)):
            problems.append(f"{it.property.name}: UNSOUND holds; sampling or gradient descent found a counterexample")
        if result == "violated":
            if it.expected == "holds":
                problems.append(f"{it.property.name}: UNSOUND violated where the property provably holds")
            if ce_dir is not None:
                from robustcli.certify.vnncomp import counterexample_name

                ce = ce_dir / counterexample_name(it.network, it.property)
                if not ce.exists():
                    problems.append(f"{it.property.name}: violated without a counterexample file")
                else:
                    x, _ = read_counterexample(ce)
                    prop = read_vnnlib(it.property)
                    y = torch.from_numpy(ort_outputs(it.network, x))
                    xt = torch.from_numpy(x)
                    ok = any(bool(((xt >= c.lower - 1e-9) & (xt <= c.upper + 1e-9)).all()) and bool(c.violated_by(y).all())
                             for c in prop.cases)
                    if not ok:
                        problems.append(f"{it.property.name}: counterexample not confirmed by onnxruntime")
    return problems
