"""CROWN, CROWN-IBP, alpha-CROWN and IBP through auto_LiRPA (an optional dependency).

Methods (Zhang et al. 2018, 2020; Xu et al. 2020/2021): `LirpaBounder(model, example, method)`
wraps a copy of the model in auto_LiRPA's `BoundedModule` once (tracing is the slow part), then
`bounds(x, eps, norm, spec)` returns lower (and optionally upper) bounds of C @ logits, with the
same C as native IBP, so the last layer is merged with the specification in both.

Choices, documented because auto_LiRPA 0.3 needs them:
- The model is deep-copied: building a BoundedModule can switch BatchNorm to train mode during
  tracing and update the running statistics of the model it is given.
- `Normalized` becomes a 1x1 depthwise convolution and AvgPool2d (count_include_pad, no ceil) an
  equivalent depthwise convolution: 0.3's CROWN asserts on a division in conv "patches" mode and
  its average-pool backward pass fails on non-contiguous tensors. Both rewrites compute the same
  function (checked in the tests). `ElementwiseAffine` (normalisation read from a graph) likewise
  becomes a depthwise convolution when it is per channel on images, else gets constants of the
  input's rank (with fewer axes 0.3's backward bounds fail on batches of more than one point).
- alpha-CROWN uses bound_opts `sparse_features_alpha: False` (shape mismatch on CNNs) and
  `sparse_spec_alpha: False` (assertion when a spec C is given).
- A float64 model (a float64 ONNX file kept in its precision) is bounded in float64, with torch's
  default dtype set to float64 around the build and every bound (`spec_lirpa.default_dtype`):
  0.3 builds its sigmoid/tanh lookup tables and max pooling's masks in the default dtype and
  fails on a float64 model otherwise ("Index put requires the source and destination dtypes match").
- L2 balls: auto_LiRPA bounds the whole L2 ball (its x_L/x_U apply to Linf only), a superset of
  ball n [0, 1], so its bounds stay sound but can be looser than native IBP's near the box faces.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Any

import torch
from torch import nn

from robustcli.certify.lirpa_compat import import_auto_lirpa
from robustcli.certify.onnx_layers import ElementwiseAffine
from robustcli.certify.spec_lirpa import default_dtype
from robustcli.core.nn import Normalized, eval_mode, model_float_dtype
from robustcli.core.errors import InputError

# CLI name -> auto_LiRPA method name.
LIRPA_METHODS = {"crown-ibp": "CROWN-IBP", "crown": "CROWN", "alpha-crown": "alpha-CROWN", "lirpa-ibp": "IBP"}
INSTALL_HINT = (
    "auto_LiRPA is not installed (needed for --method {method}); install it with "
    "`pip install --no-deps auto-lirpa==0.3 && pip install appdirs tqdm packaging` (`make install` does), "
    "or use --method ibp"
)


def auto_lirpa(method: str = "crown") -> Any:
    """The auto_LiRPA module, patched for torch 2 / numpy 2, or an InputError saying how to install it."""
    try:
        return import_auto_lirpa()
    except ImportError:
        raise InputError(INSTALL_HINT.format(method=method)) from None


def lirpa_available() -> bool:
    try:
        import_auto_lirpa()
        return True
    except ImportError:
        return False


def _depthwise_affine(channels: int, scale: torch.Tensor, shift: torch.Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 1, groups=channels)
    conv.weight.data = scale.reshape(channels, 1, 1, 1).clone()
    conv.bias.data = shift.reshape(channels).clone()
    return conv.to(scale.device)


def _avgpool_as_conv(pool: nn.AvgPool2d, channels: int, device: torch.device) -> nn.Module:
    if pool.ceil_mode or not pool.count_include_pad or pool.divisor_override is not None:
        return pool  # not a plain convolution; leave it to auto_LiRPA
    k = pool.kernel_size if isinstance(pool.kernel_size, tuple) else (pool.kernel_size, pool.kernel_size)
    conv = nn.Conv2d(channels, channels, k, stride=pool.stride, padding=pool.padding, groups=channels, bias=False)
    conv.weight.data = torch.full((channels, 1, *k), 1.0 / (k[0] * k[1]), device=device)
    return conv.to(device)


def _elementwise_for_lirpa(m: ElementwiseAffine, shape: tuple[int, ...]) -> nn.Module:
    """x * scale + shift (normalisation read from a graph) in a form auto_LiRPA 0.3 bounds, for an
    input of `shape` (batch axis included). Measured failures of the plain form: its backward bounds
    fail on batches of more than one point when a constant has fewer axes than the input ("shape
    '[9, N, -1]' is invalid"; it takes a constant's first axis for the batch), and its conv patches
    mode asserts on a product with a constant. So a per-channel map of an image becomes a 1x1
    depthwise convolution (as `Normalized` does), and any other gets constants of the input's rank."""
    full = lambda t: t.reshape((1,) * (len(shape) - t.dim()) + tuple(t.shape))  # noqa: E731
    scale, shift = full(m.scale), full(m.shift)
    if len(shape) == 4 and all(t.shape[0] == 1 and t.shape[2:] == (1, 1) for t in (scale, shift)):
        c = shape[1]
        return _depthwise_affine(c, scale.expand(1, c, 1, 1).reshape(c), shift.expand(1, c, 1, 1).reshape(c))
    return ElementwiseAffine(scale, shift)


def lirpa_friendly(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A deep copy of the model computing the same function with layers auto_LiRPA 0.3 bounds well."""
    model = copy.deepcopy(model)
    channels: dict[nn.Module, int] = {}
    shapes: dict[nn.Module, tuple[int, ...]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: channels.__setitem__(mod, inp[0].shape[1]))
        for m in model.modules()
        if isinstance(m, nn.AvgPool2d)
    ] + [
        m.register_forward_hook(lambda mod, inp, out: shapes.__setitem__(mod, tuple(inp[0].shape)))
        for m in model.modules()
        if isinstance(m, ElementwiseAffine)
    ]
    with torch.no_grad(), eval_mode(model):
        model(example[:1])
    for h in hooks:
        h.remove()

    def rewrite(m: nn.Module) -> nn.Module:
        if isinstance(m, Normalized) and m.mean.dim() == 4:
            c = m.mean.numel()
            return nn.Sequential(_depthwise_affine(c, 1.0 / m.std, -m.mean / m.std), rewrite(m.model))
        if isinstance(m, nn.AvgPool2d) and m in channels:
            return _avgpool_as_conv(m, channels[m], example.device)
        if isinstance(m, ElementwiseAffine) and m in shapes:
            return _elementwise_for_lirpa(m, shapes[m])
        for name, child in m.named_children():
            setattr(m, name, rewrite(child))
        return m

    return rewrite(model).train(model.training)


class LirpaBounder:
    """auto_LiRPA bounds of C @ logits for one model; build once, call per batch."""

    def __init__(self, model: nn.Module, example: torch.Tensor, method: str, *, alpha_iterations: int = 20,
                 fallback: str = "try --method ibp"):
        if method not in LIRPA_METHODS:
            raise ValueError(f"unknown auto_LiRPA method {method!r}; expected one of {list(LIRPA_METHODS)}")
        lirpa = auto_lirpa(method)
        self.lirpa = lirpa
        self.method = method
        self.fallback = fallback  # what a failure message suggests instead
        opts: dict[str, Any] = {"sparse_features_alpha": False, "sparse_spec_alpha": False}
        if method == "alpha-crown":
            opts["optimize_bound_args"] = {"iteration": alpha_iterations}
        friendly = lirpa_friendly(model, example)
        # A float64 model is bounded in float64 with its own weights; 0.3 builds some constants (its
        # sigmoid/tanh lookup tables, max pooling's masks) in torch's default dtype and fails on a
        # float64 model unless that default is float64 while it builds and bounds.
        self.float64 = model_float_dtype(model) == torch.float64
        try:
            # Its tracer goes through torch.onnx, which warns about modes and in-place ops it rewrites;
            # the CLI prints one line per outcome, and a failure is reported below.
            with warnings.catch_warnings(), self._precision():
                warnings.simplefilter("ignore")
                self.module = lirpa.BoundedModule(friendly, example[:1], bound_opts=opts, device=str(example.device))
        except Exception as e:  # noqa: BLE001 - auto_LiRPA's tracer raises anything on a model it cannot parse
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InputError(
                f"auto_LiRPA cannot bound this model ({type(e).__name__}: {first[:200]}); {fallback}"
            ) from None
        # BoundedModule starts in train mode whatever the model's mode is.
        self.module.train(model.training)
        if method != "lirpa-ibp":
            refuse_unsound_relaxations(self.module, method)

    def _precision(self) -> contextlib.AbstractContextManager:
        """torch's default dtype for auto_LiRPA's calls: float64 for a float64 model, else unchanged."""
        return default_dtype(torch.float64) if self.float64 else contextlib.nullcontext()

    def bounds(
        self,
        x: torch.Tensor,
        eps: float,
        norm: str = "linf",
        spec: torch.Tensor | None = None,
        *,
        bound_upper: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(lower, upper) of spec @ logits (upper is None with bound_upper=False: half the cost)."""
        if norm == "linf":
            ptb = self.lirpa.PerturbationLpNorm(
                norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1)
            )
        elif norm == "l2":
            ptb = self.lirpa.PerturbationLpNorm(norm=2, eps=eps)
        else:
            raise ValueError(f"unknown norm {norm!r}")
        bt = self.lirpa.BoundedTensor(x, ptb)
        method = LIRPA_METHODS[self.method]
        try:
            # alpha-CROWN optimises its slopes by gradient descent, also when the caller bounds
            # under torch.no_grad (the returned bounds are detached either way).
            with torch.enable_grad() if self.method == "alpha-crown" else contextlib.nullcontext(), self._precision():
                lower, up = self.module.compute_bounds(
                    x=(bt,), C=spec, method=method, bound_lower=True, bound_upper=bound_upper
                )
        except Exception as e:  # noqa: BLE001
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InputError(
                f"auto_LiRPA {method} failed on this model ({type(e).__name__}: {first[:200]}); {self.fallback}"
            ) from None
        return lower.detach(), up.detach() if bound_upper and up is not None else None


# auto_LiRPA 0.3 operators whose linear relaxation is not sound, found by sampling (a lower bound above
# sampled outputs): BoundSqrt's upper tangent line has slope -0.5 x^-1.5 instead of 0.5 x^-0.5. Its
# interval step (lirpa-ibp) is monotone and sound.
UNSOUND_RELAXATIONS = {"BoundSqrt": "square root"}


def refuse_unsound_relaxations(module: nn.Module, method: str,
                               instead: str = "use --method lirpa-ibp, whose interval bounds of it are") -> None:
    """InputError when the BoundedModule holds an operator whose relaxation is not sound (`method`
    is one of LIRPA_METHODS; its IBP is not affected)."""
    for name, node in module._modules.items():
        what = UNSOUND_RELAXATIONS.get(type(node).__name__)
        if what is not None:
            raise InputError(
                f"auto_LiRPA 0.3's {LIRPA_METHODS[method]} relaxation of a {what} (node {name!r}) is not sound, "
                f"so it is refused here; {instead}"
            )


def lirpa_bounds(
    model: nn.Module,
    x: torch.Tensor,
    eps: float,
    norm: str = "linf",
    spec: torch.Tensor | None = None,
    method: str = "crown",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One-shot convenience: build a `LirpaBounder` and bound one batch."""
    return LirpaBounder(model, x, method).bounds(x, eps, norm, spec)
