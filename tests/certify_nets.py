"""Random small networks and exhaustive-ish margin minimisers shared by the certify tests."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from robustcli.core.nn import Residual
from robustcli.core.nn import Normalized


def randomize_bn(model: nn.Module, g: torch.Generator) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.3)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)


def random_mlp(depth: int, bn: bool, seed: int, width: int = 16, side: int = 4, classes: int = 5) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    d = side * side
    for _ in range(depth - 1):
        layers.append(nn.Linear(d, width))
        if bn:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU())
        d = width
    layers.append(nn.Linear(d, classes))
    model = Normalized(nn.Sequential(*layers), [0.4], [0.3])
    randomize_bn(model, g)
    return model.eval()


def random_cnn(depth: int, bn: bool, seed: int, side: int = 8, classes: int = 5, residual: bool = False) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    c = 1
    for i in range(depth - 1):
        layers.append(nn.Conv2d(c, 4, 3, stride=1, padding=1))
        if bn:
            layers.append(nn.BatchNorm2d(4))
        layers.append(nn.ReLU())
        c = 4
    if residual:
        body = [nn.Conv2d(c, c, 3, padding=1)] + ([nn.BatchNorm2d(c)] if bn else []) + [nn.ReLU()]
        layers.append(Residual(nn.Sequential(*body)))
    layers += [nn.AvgPool2d(2), nn.Flatten(), nn.Linear(c * (side // 2) ** 2, 8), nn.ReLU(), nn.Linear(8, classes)]
    model = Normalized(nn.Sequential(*layers), [0.4], [0.3])
    randomize_bn(model, g)
    return model.eval()


def spec_values(model: nn.Module, x: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
    """(N, S) margins C z at inputs x (N, ...)."""
    with torch.no_grad():
        return torch.einsum("nsk,nk->ns", spec, model(x))


def sample_ball(x: torch.Tensor, eps: float, norm: str, k: int, g: torch.Generator, corners: bool) -> torch.Tensor:
    """k points per input in the ball intersected with [0, 1]: (k, N, ...).

    Clamping to [0, 1] moves each coordinate towards x (which is in the box), so it stays in the ball.
    """
    shape = (k, *x.shape)
    if norm == "linf":
        u = torch.randint(0, 2, shape, generator=g).float() * 2 - 1 if corners else torch.rand(shape, generator=g) * 2 - 1
        return (x + eps * u).clamp(0, 1)
    d = torch.randn(shape, generator=g)
    d = d / d.flatten(2).norm(dim=2).view(k, -1, *([1] * (x.dim() - 1)))
    radius = torch.ones(k, len(x)) if corners else torch.rand(k, len(x), generator=g) ** (1 / x[0].numel())
    return (x + eps * d * radius.view(k, -1, *([1] * (x.dim() - 1)))).clamp(0, 1)


def pgd_min_spec(model, x, spec, eps, norm, steps=40, g=None) -> torch.Tensor:
    """Per row of the spec, the smallest value PGD finds inside the ball n [0, 1]: (N, S)."""
    n, s = spec.shape[:2]
    xs = x.repeat_interleave(s, 0)
    rows = spec.reshape(n * s, 1, -1)
    delta = (sample_ball(xs, eps, norm, 1, g, corners=False)[0] - xs).detach()
    step = 2.5 * eps / steps
    best = torch.full((n * s,), float("inf"))
    for _ in range(steps + 1):
        delta.requires_grad_(True)
        val = torch.einsum("nsk,nk->ns", rows, model(xs + delta)).squeeze(1)
        best = torch.minimum(best, val.detach())
        (grad,) = torch.autograd.grad(val.sum(), delta)
        with torch.no_grad():
            if norm == "linf":
                delta = (delta - step * grad.sign()).clamp(-eps, eps)
            else:
                gn = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
                delta = delta - step * grad / gn
                dn = delta.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
                delta = delta * torch.clamp(eps / dn.clamp_min(1e-12), max=1.0)
            delta = (xs + delta).clamp(0, 1) - xs
    return best.view(n, s)


def tanh_digits_mlp() -> nn.Module:
    """A digits-shaped MLP with a Tanh: monotone, so native IBP bounds it; the tightness metric refuses it."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))


def silu_digits_mlp() -> nn.Module:
    """A digits-shaped MLP with a SiLU (not monotone: IBP bounds it through its range on each interval)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.SiLU(), nn.Linear(16, 10))


def tanhshrink_digits_cnn() -> nn.Module:
    """A digits CNN with a Tanhshrink (x - tanh x)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Tanhshrink(), nn.Flatten(), nn.Linear(256, 10))


def gelu_digits_mlp() -> nn.Module:
    """A digits-shaped MLP with a GELU: neither native IBP nor auto_LiRPA 0.3 bounds it."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.GELU(), nn.Linear(16, 10))


def maxpool_digits_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10))


class UserDigitsCNN(nn.Module):
    """A CNN for 8x8 digits as people write it: functional ReLU, view-based flatten, normalisation in forward."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(8 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        import torch.nn.functional as F

        x = (x - 0.5) / 0.25
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = x.view(x.size(0), -1)
        return self.fc2(F.relu(self.fc1(x)))


def user_digits_cnn() -> nn.Module:
    torch.manual_seed(0)
    return UserDigitsCNN()


class MonotoneDigitsCNN(nn.Module):
    """A digits CNN written with max pooling and smooth activations (functional calls, view flatten):
    every non-affine layer is monotone, so native IBP bounds it; the CROWN chain engine does not."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 3 * 3, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        import torch.nn.functional as F

        x = F.max_pool2d(torch.tanh(self.conv1((x - 0.5) / 0.25)), 2)
        x = F.max_pool2d(F.leaky_relu(self.conv2(x), 0.1), 2, stride=2, padding=1)
        x = torch.sigmoid(self.fc1(x.view(x.size(0), -1)))
        return self.fc2(x)


def monotone_digits_cnn() -> nn.Module:
    torch.manual_seed(0)
    return MonotoneDigitsCNN()


def monotone_digits_cnn_bn() -> nn.Module:
    """A Sequential digits CNN with BatchNorm, Tanh, max pooling and Sigmoid (certified training walks it)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Sigmoid(), nn.Linear(16, 10),
    )  # fmt: skip


class ConcatDigitsCNN(nn.Module):
    """A digits CNN joining branches with torch.cat the way people write it: DenseNet-style reuse of
    the input (`cat([x, f(x)], 1)`), an Inception block (1x1 conv, 3x3 conv, 3x3 average pool side
    by side) and a feature-level cat after the flatten."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.a, self.b = nn.Conv2d(5, 3, 1), nn.Conv2d(5, 3, 3, padding=1)
        self.fc1, self.fc_extra = nn.Linear(11 * 4 * 4, 12), nn.Linear(12, 6)
        self.fc2 = nn.Linear(18, 10)

    def forward(self, x):
        import torch.nn.functional as F

        h = torch.cat([x, F.relu(self.bn(self.stem(x)))], 1)
        h = torch.cat([F.relu(self.a(h)), F.relu(self.b(h)), F.avg_pool2d(h, 3, 1, 1)], dim=1)
        z = F.relu(self.fc1(F.avg_pool2d(h, 2).view(h.size(0), -1)))
        return self.fc2(torch.cat([z, F.relu(self.fc_extra(z))], -1))


def concat_digits_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = ConcatDigitsCNN()
    randomize_bn(model, torch.Generator().manual_seed(0))
    return model


def concat_digits_sequential() -> nn.Module:
    """The same kind of network from `Concat` modules (what certified training walks): BatchNorm in
    the branches so training bounds them with batch statistics."""
    from robustcli.core.nn import Concat

    torch.manual_seed(0)
    stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    inception = Concat([nn.Sequential(nn.Conv2d(5, 3, 1), nn.ReLU()),
                        nn.Sequential(nn.Conv2d(5, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())], dim=1)
    return nn.Sequential(Concat([nn.Identity(), stem]), inception, nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(6 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 10))


def model_formats(folder: Path, model: nn.Module, x: torch.Tensor) -> dict[str, nn.Module]:
    """The model as a user could hand it over: the module, a `.pt2` program, TorchScript and (when
    the onnx extra is installed) ONNX, each read back the way `robust` reads it."""
    forms = {"module": model}
    buf = io.BytesIO()
    torch.export.save(torch.export.export(model, (x,)), buf)
    buf.seek(0)
    forms["pt2"] = torch.export.load(buf).module()
    forms["torchscript"] = torch.jit.trace(model, x)
    try:
        from robustcli.certify.onnx_import import onnx_to_torch

        path = folder / "model.onnx"
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"])
        forms["onnx"] = onnx_to_torch(path).module
    except ImportError:
        pass
    return forms


def model_files(folder: Path, model: nn.Module, x: torch.Tensor, arch: str) -> dict[str, list]:
    """The model saved the four ways a user hands `robust` a file, as its command-line arguments: a
    state dict with `--arch`, a `.pt2` program exported for any batch size and one exported at a
    fixed batch of 1 (`torch.export.export(model, (x[:1],))`, the shortest export), TorchScript and
    (when the onnx extra is installed) ONNX with a dynamic batch axis."""
    torch.save(model.state_dict(), folder / "state.pt")
    batch = torch.export.Dim("batch", min=2)
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}}), str(folder / "m.pt2"))
    torch.export.save(torch.export.export(model, (x[:1],)), str(folder / "m1.pt2"))
    torch.jit.save(torch.jit.trace(model, x), str(folder / "scripted.pt"))
    files = {"state": ["--model", folder / "state.pt", "--arch", arch], "pt2": ["--model", folder / "m.pt2"],
             "pt2-batch1": ["--model", folder / "m1.pt2"],
             "torchscript": ["--model", folder / "scripted.pt"]}
    try:
        torch.onnx.export(model, (x,), str(folder / "m.onnx"), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
        files["onnx"] = ["--model", folder / "m.onnx"]
    except ImportError:
        pass
    return files


def resnet_digits_cnn(fc_residual: bool = True) -> nn.Module:
    """A ResNet-style digits CNN from `Residual` modules: normalisation in front, two residual blocks
    (identity shortcut with BatchNorm in the body, then a strided block with a 1x1 conv shortcut),
    a ReLU after each add, average pooling and (`fc_residual`) a residual MLP block before the head
    (auto_LiRPA 0.3's CROWN fails on that add of flat tensors: IndexError, measured)."""
    torch.manual_seed(0)
    block1 = Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)))
    block2 = Residual(nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1)),
                      nn.Conv2d(4, 6, 1, stride=2))
    fc_block = Residual(nn.Sequential(nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 24)))
    model = Normalized(nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), block1, nn.ReLU(), block2, nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
        *([fc_block, nn.ReLU()] if fc_residual else []), nn.Linear(24, 10),
    ), [0.4], [0.3])  # fmt: skip
    randomize_bn(model, torch.Generator().manual_seed(0))
    return model.eval()


def empirical_min(model: nn.Module, x: torch.Tensor, spec: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """(N, S) the smallest margins found inside the ball n [0, 1]: 150 sampled points, 50 corners
    (Linf) or sphere points (L2), and a 20-step PGD."""
    g = torch.Generator().manual_seed(1)
    sampled = torch.stack([spec_values(model, p, spec) for p in sample_ball(x, eps, norm, 150, g, corners=False)])
    corners = torch.stack([spec_values(model, p, spec) for p in sample_ball(x, eps, norm, 50, g, corners=True)])
    attacked = pgd_min_spec(model, x, spec, eps, norm, steps=20, g=g)
    return torch.minimum(torch.minimum(sampled.min(0).values, corners.min(0).values), attacked)


def sound_ball_lows(model: nn.Module, x: torch.Tensor, spec: torch.Tensor, eps: float, norm: str,
                    methods: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Each method's lower bounds of `spec` over the ball (6 alpha-CROWN iterations), asserted finite
    and never above the smallest margin found inside it (`empirical_min`)."""
    from robustcli.certify.bounders import InputSet, build_bounder

    s = InputSet.ball(x, eps, norm)
    lows = {m: build_bounder(m, model, x[:2], alpha_iterations=6, norm=norm).lower(s, spec) for m in methods}
    empirical = empirical_min(model, x, spec, eps, norm)
    for m, low in lows.items():
        assert bool((low <= empirical + 1e-5 + 1e-5 * empirical.abs()).all()), f"{m} {norm}: bound above a point"
        assert bool(torch.isfinite(low).all())
    return lows


def sound_box_lows(model: nn.Module, x: torch.Tensor, width: float, methods: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Each method's lower bounds (8 alpha-CROWN iterations) of random rows C f(x) + d over a
    per-element box with an offset (what VNNLIB gives: lo = x - w, hi = x + w / 2, w up to `width`,
    clipped to [0, 1]), asserted never above C f + d at 300 points of the box (60 of them corners)."""
    from robustcli.certify.bounders import InputSet, build_bounder

    g = torch.Generator().manual_seed(6)
    w = width * torch.rand(x.shape, generator=g)
    lo, hi = (x - w).clamp(0, 1), (x + 0.5 * w).clamp(0, 1)
    with torch.no_grad():
        C = torch.randn(len(x), 3, model(x).shape[1], generator=g)
    d = torch.randn(len(x), 3, generator=g)
    pts = lo + (hi - lo) * torch.rand(300, *x.shape, generator=g)
    pts[:60] = torch.where(torch.rand(60, *x.shape, generator=g) < 0.5, lo, hi)
    with torch.no_grad():
        vals = torch.stack([torch.einsum("nsk,nk->ns", C, model(p)) + d for p in pts]).min(0).values
    box = InputSet.box(lo, hi)
    lows = {m: build_bounder(m, model, x[:2], alpha_iterations=8).lower(box, C, d) for m in methods}
    for m, low in lows.items():
        assert bool((low <= vals + 1e-5).all()), m
    return lows


def grid_points(seed: int, n: int = 3) -> torch.Tensor:
    """n random 1x8x8 inputs in [0, 1]."""
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def predicted_margins(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The margin specification of the model's own predictions at x."""
    from robustcli.certify.spec import margin_spec

    with torch.no_grad():
        out = model(x)
    return margin_spec(out.argmax(1), out.shape[1])


def node_values(dag, x: torch.Tensor) -> list[torch.Tensor]:
    """Every node's value at inputs x (N, *input), flat (N, n): a certify/dag_bounds.py graph evaluated node by
    node (what sub-problem bounds are checked against)."""
    vals: list[torch.Tensor] = []
    for n in dag.nodes:
        if n.kind == "input":
            v = x
        elif n.kind == "affine":
            v = vals[n.parents[0]]
            for m in n.layers:
                v = m(v)
        elif n.kind == "add":
            v = sum(vals[q] for q in n.parents)
        elif n.kind == "concat":
            v = torch.cat([vals[q] for q in n.parents], n.axis + 1)
        elif n.kind == "maxpool":
            v = n.layers[0](vals[n.parents[0]])
        else:
            v = torch.relu(vals[n.parents[0]])
        vals.append(v)
    return [v.reshape(len(x), -1) for v in vals]
