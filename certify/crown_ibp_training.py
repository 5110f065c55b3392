"""CROWN-IBP bounds for the training loss (Zhang et al. 2020), through auto_LiRPA, differentiable.

`certify.lirpa.LirpaBounder` is built for certification: it bounds a deep copy and returns
detached bounds. Training needs the opposite, so this module builds auto_LiRPA's BoundedModule
on the training model itself: auto_LiRPA 0.3 keeps the model's own Parameter objects, so the
bounds' gradients land on the weights the optimiser updates (checked at construction).

Choices:
- `Normalized` is bounded as a fixed (frozen) 1x1 depthwise convolution in front of the shared
  inner network, the same rewrite `certify.lirpa` uses because 0.3's CROWN fails on the division.
- auto_LiRPA's forward pass in train mode updates BatchNorm running statistics in place, which
  would both double-count each batch and invalidate the autograd graph of the training loop's own
  clean forward (torch saves the running-stat tensors for BN's backward). So after construction
  the model's running-stat buffers are replaced by copies: auto_LiRPA keeps updating the old
  tensors (unused: in train mode it normalises with batch statistics), the model its own.
"""

from __future__ import annotations

import contextlib
import io

import torch
from torch import nn

from robustcli.certify.lirpa import auto_lirpa
from robustcli.core.nn import Normalized, eval_mode
from robustcli.core.errors import InputError


def _frozen_affine(mean: torch.Tensor, std: torch.Tensor) -> nn.Conv2d:
    c = mean.numel()
    conv = nn.Conv2d(c, c, 1, groups=c).to(mean.device)
    with torch.no_grad():
        conv.weight.copy_((1.0 / std).reshape(c, 1, 1, 1))
        conv.bias.copy_((-mean / std).reshape(c))
    conv.requires_grad_(False)
    return conv


def _shared_view(model: nn.Module) -> nn.Module:
    """The same function as `model`, sharing its layers, in a form auto_LiRPA 0.3 bounds."""
    if isinstance(model, Normalized) and model.mean.dim() == 4:
        return nn.Sequential(_frozen_affine(model.mean, model.std), model.model)
    return model


def _bn_statistics(model: nn.Module) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [
        (m, m.running_mean.detach().clone(), m.running_var.detach().clone(), m.num_batches_tracked.detach().clone())
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    ]


def _decouple_bn_statistics(saved: list[tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    """Give every BatchNorm fresh running-stat tensors holding the saved values (new objects, not in place)."""
    for m, mean, var, count in saved:
        m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count


class CrownIBPTrainingBounds:
    """Callable (model, x, eps, norm, C) -> CROWN-IBP lower bounds of C @ logits, with gradients."""

    def __init__(self, model: nn.Module, example: torch.Tensor):
        lirpa = auto_lirpa("crown-ibp")
        self.lirpa = lirpa
        self.model = model
        view = _shared_view(model)
        opts = {"sparse_features_alpha": False, "sparse_spec_alpha": False}
        saved = _bn_statistics(model)
        try:
            # eval mode: tracing BN in train mode is fragile in 0.3; 0.3 prints BN warnings on stdout
            with eval_mode(model), contextlib.redirect_stdout(io.StringIO()):
                self.module = lirpa.BoundedModule(view, example[:2], bound_opts=opts, device=str(example.device))
        except Exception as e:  # noqa: BLE001 - the tracer raises anything on a model it cannot parse
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InputError(
                f"auto_LiRPA cannot bound this model for CROWN-IBP training ({type(e).__name__}: {first[:200]}); "
                "use --method ibp"
            ) from None
        _decouple_bn_statistics(saved)
        shared = {id(p) for p in self.module.parameters()}
        if not all(id(p) in shared for p in model.parameters() if p.requires_grad):
            raise InputError(
                "this auto_LiRPA version copies the model's parameters, so CROWN-IBP bounds would not train it; "
                "use --method ibp"
            )

    def __call__(self, model: nn.Module, x: torch.Tensor, eps: float, norm: str, spec: torch.Tensor) -> torch.Tensor:
        if model is not self.model:
            raise ValueError("CrownIBPTrainingBounds was built for a different model")
        if norm == "linf":
            ptb = self.lirpa.PerturbationLpNorm(
                norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1)
            )
        else:
            ptb = self.lirpa.PerturbationLpNorm(norm=2, eps=eps)  # the whole ball: a sound superset
        self.module.train(model.training)
        # A clean forward first: in train mode auto_LiRPA 0.3's BN bounds otherwise take their
        # statistics from a stale forward or from the interval midpoints; this pins them to the
        # clean batch's, the same fixed affine map native IBP uses (Shi et al. 2021, sec. 3.3).
        self.module(x)
        lower, _ = self.module.compute_bounds(
            x=(self.lirpa.BoundedTensor(x, ptb),), C=spec, method="CROWN-IBP", bound_upper=False
        )
        return lower


def crown_ibp_lower_bound_fn(model: nn.Module, example: torch.Tensor) -> CrownIBPTrainingBounds:
    """The bound function `certify.training.train_ibp` takes for method crown-ibp."""
    return CrownIBPTrainingBounds(model, example)
