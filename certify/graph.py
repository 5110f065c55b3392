"""A model as a list of steps that bound engines walk, with one clear error per unsupported layer.

Supported: nn.Sequential (not subclasses that override forward), robustcli's `Normalized`,
`robustcli.core.nn.Residual` and `Concat` (branches forking from one value, summed or
concatenated), Linear, Conv2d (zero padding), ReLU, BatchNorm1d/2d, Flatten, AvgPool2d,
AdaptiveAvgPool2d, Identity and Dropout (eval mode), and the monotone layers
(`MONOTONE`: max pooling, sigmoid, tanh, leaky ReLU with slope >= 0, hardtanh/ReLU6/clamp, ELU
with alpha >= 0, CELU, SELU, softplus, log-sigmoid, hardsigmoid, softsign): nondecreasing in every input,
so interval propagation maps [l, u] to [f(l), f(u)] (Gowal et al. 2018, sec. 3); IBP maps the
other activations certify/activation_lines.py covers through `activation_range` (sound [min f, max f]
over [l, u]). The CROWN chain engine
bounds only ReLU networks; the graph engine (certify/dag_bounds.py) also relaxes every elementwise
activation certify/activation_lines.py covers, the non-monotone ones too (GELU, SiLU, Mish,
Hardswish, LeakyReLU or ELU with a negative slope): `model_steps` with a CROWN method
(`LINE_METHODS`) accepts those. Anything else raises `UnsupportedLayer`, naming the layer and a
method that can bound it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from robustcli.certify.activation_lines import covered
from robustcli.certify.onnx_layers import Clip, ElementwiseAffine, Permute, Reshape, Slice
from robustcli.core.nn import Concat, Residual
from robustcli.core.nn import Normalized
from robustcli.core.errors import InputError

LINEAR = (nn.Linear, nn.Conv2d)
ELEMENTWISE_AFFINE = (nn.BatchNorm1d, nn.BatchNorm2d)
CONSTANT_AFFINE = (ElementwiseAffine,)  # x * scale + shift with constants (normalisation from a graph)
POSITIVE_LINEAR = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)  # nonnegative weights: |W| = W
RESHAPE = (nn.Flatten, Reshape, Permute)  # reorderings of coordinates: boxes and L2 balls map to themselves
SELECT = (Slice,)  # keeps some coordinates: a box maps to a box (an L2 ball does not stay a ball around them)
IDENTITY = (nn.Identity, nn.Dropout)
# Nondecreasing in every input: the interval [l, u] maps to [f(l), f(u)] (IBP only, not the CROWN chain).
MONOTONE = (
    nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.Hardtanh, Clip, nn.ELU, nn.CELU,
    nn.SELU, nn.Softplus, nn.LogSigmoid, nn.Hardsigmoid, nn.Softsign,
)  # fmt: skip  (nn.ReLU6 is an nn.Hardtanh)
# Other activations: not monotone (or a whole-vector map), so native IBP refuses them.
NONLINEAR_ACTIVATIONS = (
    nn.GELU, nn.SiLU, nn.Softmax, nn.LogSoftmax, nn.Mish, nn.PReLU, nn.Hardswish, nn.Tanhshrink,
)  # fmt: skip


# Methods whose native engine relaxes every activation certify/activation_lines.py covers.
LINE_METHODS = ("crown", "alpha-crown", "crown-ibp")
NATIVE_CROWN = "--method crown or alpha-crown bound it natively (linear relaxations)"


class UnsupportedLayer(InputError):
    """A layer a bound method cannot handle; the message names the layer and an alternative.

    `leaf`: the layer is a single operation (Tanh, MaxPool2d), not a container with its own forward
    (those go through the graph front end, certify/trace.py, instead)."""

    leaf: bool = True


@dataclass
class Step:
    name: str  # dotted path in the model, as named_modules() spells it ('' for the root)
    module: nn.Module
    branches: list[list["Step"]] = field(default_factory=list)  # Residual: [body, shortcut]; Concat: its branches

    @property
    def kind(self) -> str:
        return type(self.module).__name__


def _label(name: str, module: nn.Module) -> str:
    return f"'{name or '<root>'}' ({type(module).__name__})"


# Measured on auto_LiRPA 0.3 (a small CNN, Linf ball): its CROWN bounds these layers (MaxPool2d only with
# kernel = stride and no padding), and fails on the layers of LIRPA_CROWN_FAILS.
LIRPA_CROWN_BOUNDS = (nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.LogSigmoid, nn.SiLU, nn.Tanhshrink, nn.MaxPool2d)
LIRPA_CROWN_FAILS = (
    nn.GELU, nn.Softmax, nn.LogSoftmax, nn.Mish, nn.PReLU, nn.Hardswish, nn.LPPool2d, nn.ELU, nn.CELU, nn.SELU,
    nn.Softplus, nn.Hardtanh, nn.Hardsigmoid, nn.Softsign, Clip,
)  # fmt: skip


def lirpa_crown_bounds(m: nn.Module) -> bool:
    """Whether auto_LiRPA 0.3's CROWN bounds this layer (measured; see LIRPA_CROWN_BOUNDS)."""
    if isinstance(m, nn.LeakyReLU) and m.negative_slope < 0:
        return False  # not measured
    if isinstance(m, nn.MaxPool2d):
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
        return (pair(m.padding) == (0, 0) and pair(m.stride) == pair(m.kernel_size) and pair(m.dilation) == (1, 1)
                and not m.ceil_mode)
    return isinstance(m, LIRPA_CROWN_BOUNDS)


def _alternative(method: str, m: nn.Module | None = None) -> str:
    if method == "tightness":
        return ("the tightness metric needs a ReLU network of Linear, Conv2d, BatchNorm, average pooling and "
                "reshapes (its local linearisation is the ReLU activation pattern)")
    if m is not None and lirpa_crown_bounds(m):
        return "use --method lirpa-crown (auto_LiRPA bounds it)"
    if isinstance(m, LIRPA_CROWN_FAILS):
        return "auto_LiRPA 0.3 (the lirpa-* methods) does not bound it either; replace it with a ReLU or a monotone layer"
    return "use --method lirpa-crown or lirpa-alpha-crown (auto_LiRPA), which bound more layer types"


def model_steps(model: nn.Module, method: str = "ibp", prefix: str = "") -> list[Step]:
    """Flatten a model into steps; nested Sequentials and Normalized wrappers are expanded inline."""
    m = model
    if isinstance(m, Normalized):
        return [Step(prefix, m)] + model_steps(m.model, method, _join(prefix, "model"))
    if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward:
        steps: list[Step] = []
        for child_name, child in m.named_children():
            steps += model_steps(child, method, _join(prefix, child_name))
        return steps
    if isinstance(m, Residual):
        body = model_steps(m.body, method, _join(prefix, "body"))
        shortcut = model_steps(m.shortcut, method, _join(prefix, "shortcut"))
        return [Step(prefix, m, [body, shortcut])]
    if isinstance(m, Concat):
        branches = [model_steps(b, method, _join(prefix, f"branches.{i}")) for i, b in enumerate(m.branches)]
        return [Step(prefix, m, branches)]
    if isinstance(m, nn.ReLU) or isinstance(m, LINEAR + ELEMENTWISE_AFFINE + CONSTANT_AFFINE + POSITIVE_LINEAR + RESHAPE + SELECT + IDENTITY):
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            raise UnsupportedLayer(
                f"{method} supports only zero padding, but layer {_label(prefix, m)} uses "
                f"padding_mode={m.padding_mode!r}; {_alternative(method)}"
            )
        return [Step(prefix, m)]
    if isinstance(m, MONOTONE):
        return [_monotone_step(prefix, m, method)]
    if method in LINE_METHODS + ("ibp",) and covered(m):
        return [Step(prefix, m)]
    if isinstance(m, (nn.Softmax, nn.LogSoftmax)):  # a final one over the classes never reaches here
        what = "log-softmax" if isinstance(m, nn.LogSoftmax) else "softmax"
        raise UnsupportedLayer(
            f"{describe(Step(prefix, m))} is a {what} before the model's output (or over a feature map); the bound "
            f"engines read a {what} only as the model's last layer, over its class logits; move it there, export "
            "the logits, or replace it with a ReLU or a monotone layer"
        )
    if isinstance(m, NONLINEAR_ACTIVATIONS):
        native = f"{NATIVE_CROWN}; " if covered(m) and method != "tightness" else ""
        raise UnsupportedLayer(
            f"{describe(Step(prefix, m))} is not monotone; native {method} handles ReLU and the monotone "
            f"activations (Sigmoid, Tanh, LeakyReLU, ELU, Softplus, ...) and max pooling; {native}{_alternative(method, m)}"
        )
    err = UnsupportedLayer(
        f"{method} cannot bound layer {_label(prefix, m)}; it supports Sequential, Linear, Conv2d, ReLU, "
        f"BatchNorm, Flatten, AvgPool2d, MaxPool2d, Sigmoid, Tanh, LeakyReLU, Residual and Concat; "
        f"{_alternative(method, m)}"
    )
    err.leaf = next(m.children(), None) is None and type(m).forward is not nn.Module.forward
    raise err


def _monotone_step(name: str, m: nn.Module, method: str) -> Step:
    what = describe(Step(name, m))
    if method == "tightness":
        raise UnsupportedLayer(f"{what} is not a ReLU; {_alternative(method)}")
    slope = _slope(m)
    if slope < 0 and not (method in LINE_METHODS + ("ibp",) and covered(m)):
        raise UnsupportedLayer(
            f"{what} has a negative slope ({slope}), so it is not monotone and native {method} cannot bound it; "
            f"use a slope >= 0{' or --method crown' if covered(m) else ''}"
        )
    if isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) and m.return_indices:
        raise UnsupportedLayer(f"{what} returns indices; bounding needs it to return values only")
    return Step(name, m)


def _slope(m: nn.Module) -> float:
    return m.negative_slope if isinstance(m, nn.LeakyReLU) else m.alpha if isinstance(m, nn.ELU) else 0.0


def nondecreasing(m: nn.Module) -> bool:
    """A MONOTONE layer as configured: LeakyReLU and ELU with a negative slope are not."""
    return isinstance(m, MONOTONE) and _slope(m) >= 0


def layers_of(steps: list[Step], kinds: tuple[type, ...]) -> list[Step]:
    """The steps whose module is one of `kinds`, branches included, in order."""
    found: list[Step] = []
    for s in steps:
        if isinstance(s.module, kinds):
            found.append(s)
        for b in s.branches:
            found += layers_of(b, kinds)
    return found


def monotone_layers(steps: list[Step]) -> list[Step]:
    """The monotone non-ReLU steps (MaxPool2d, Sigmoid, ...), branches included, in order."""
    return layers_of(steps, MONOTONE)


def describe(step: Step) -> str:
    """How the user knows the step: the graph operation it came from (traced models), else its module path."""
    origin = getattr(step.module, "origin", None)
    return origin if isinstance(origin, str) else f"layer {_label(step.name, step.module)}"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def needs_clean_pass(steps: list[Step]) -> bool:
    """True if some BatchNorm normalises with batch statistics (train mode or no running stats)."""
    for s in steps:
        if isinstance(s.module, ELEMENTWISE_AFFINE) and uses_batch_stats(s.module):
            return True
        if any(needs_clean_pass(b) for b in s.branches):
            return True
    return False


def uses_batch_stats(bn: nn.modules.batchnorm._BatchNorm) -> bool:
    return bn.training or bn.running_mean is None
