"""IBP initialisation (Shi et al. 2021, "Fast Certified Robust Training with Short Warmup", sec. 3.2).

With W ~ N(0, sigma^2) and sigma = sqrt(2 pi) / fan_in, E[|W|] = sigma * sqrt(2 / pi) = 2 / fan_in,
so E[sum_i |W_ki| r_i] = 2 * mean(r): the interval radius through |W| doubles per layer, and a
ReLU on a roughly centred unstable interval halves it again (Shi et al., Theorem 1 / eq. 8). The
expected bound width therefore stays about constant with depth, instead of growing by a factor
of about sqrt(fan_in) per layer under the default (Kaiming-uniform) initialisation.

Choices the paper leaves to the code, documented here:
- "Every layer but the last": the last Linear/Conv2d in the order `model.modules()` lists them
  keeps its default initialisation.
- 1-D parameters (biases, BatchNorm affine) are left untouched.
- Weights feeding a residual add: the last Linear/Conv2d of each branch of a
  `robustcli.core.nn.Residual` is halved after drawing, so the sum of two branches keeps the width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

AFFINE = (nn.Linear, nn.Conv2d)


def ibp_sigma(weight: torch.Tensor) -> float:
    """sigma = sqrt(2 pi) / fan_in (Shi et al. 2021, eq. 9)."""
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
    return math.sqrt(2 * math.pi) / fan_in


def _affine_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, AFFINE)]


def _residual_feeders(model: nn.Module) -> list[nn.Module]:
    """The last affine layer of each branch of every residual block."""
    from robustcli.core.nn import Residual

    feeders = []
    for m in model.modules():
        if isinstance(m, Residual):
            for branch in (m.body, m.shortcut):
                layers = _affine_layers(branch)
                if layers:
                    feeders.append(layers[-1])
    return feeders


@torch.no_grad()
def ibp_init(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Redraw every Linear/Conv2d weight but the last one's from N(0, (sqrt(2 pi) / fan_in)^2), in place.

    `generator` (on the weights' device) makes the draw reproducible; returns the model.
    """
    layers = _affine_layers(model)
    if not layers:
        return model
    last = layers[-1]
    for m in layers[:-1]:
        w = m.weight
        noise = torch.randn(w.shape, generator=generator, device=w.device, dtype=w.dtype)
        w.copy_(noise * ibp_sigma(w))
    for m in _residual_feeders(model):
        if m is not last:
            m.weight.mul_(0.5)
    return model
