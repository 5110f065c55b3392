"""Warmup regularisers of Shi et al. 2021 (sec. 3.3), from the pre-ReLU intervals IBP produces.

Both are averaged over ReLU layers and used only while eps ramps up, with weight
lambda * (1 - eps_t / eps_max) (the training loop applies the weight).

- Tightness, L_tight = mean_i relu(tau - r0 / r_i) / tau: r_i is the mean radius of the interval
  entering the i-th ReLU and r0 the mean radius of the input interval. It is zero while bounds
  grow by less than 1 / tau over the network, and pushes them back when they explode.
- ReLU balance, L_relu: for each layer with interval centres c, active (l > 0) and inactive
  (u < 0) neurons, the ratio of the means E[c 1_act] / E[-c 1_inact] and the ratio of the
  variances sum (c - mean c)^2 1_act / sum (c - mean c)^2 1_inact, each ratio r penalised by
  relu(tau - min(r, 1 / r)) / tau. It keeps active and inactive neurons balanced, so IBP does not
  drive a layer to all-inactive (dead) ReLUs.

Choices: r0 is measured where the first affine layer sees the input, i.e. after the model's
`Normalized` wrapper (radius / std), as in the paper's normalised-input setting; the input box is
the eps ball clipped to [0, 1]. A layer whose ratio is undefined (no active and no inactive
neuron: 0 / 0) contributes zero to L_relu; a layer with only one kind gets the full penalty 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustcli.certify.bounds import Bounds, IBPResult


def input_radius(result: IBPResult, model: nn.Module) -> torch.Tensor:
    """Mean radius of the input box as the first affine layer sees it (after `Normalized`)."""
    from robustcli.core.nn import Normalized

    r = result.input.radius
    if isinstance(model, Normalized):
        r = r / model.std
    return r.mean()


def tightness_loss(pre_relu: list[Bounds], r0: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """L_tight = mean over ReLU layers of relu(tau - r0 / r_i) / tau."""
    if not pre_relu:
        return r0.new_zeros(())
    terms = [F.relu(tau - r0 / b.radius.mean().clamp_min(1e-12)) / tau for b in pre_relu]
    return torch.stack(terms).mean()


def _balance_penalty(r: torch.Tensor, tau: float) -> torch.Tensor:
    r = torch.minimum(r, 1 / r.clamp_min(1e-12))
    return F.relu(tau - r) / tau


def relu_balance_loss(pre_relu: list[Bounds], tau: float = 0.5) -> torch.Tensor:
    """L_relu = mean over ReLU layers of the mean-ratio and variance-ratio penalties."""
    if not pre_relu:
        return torch.zeros(())
    terms = []
    for b in pre_relu:
        c = b.centre
        active = (b.lower > 0).to(c.dtype)
        inactive = (b.upper < 0).to(c.dtype)
        mean_active = (c * active).mean()
        mean_inactive = (-c * inactive).mean()
        delta = (c - c.mean()).square()
        var_active = (delta * active).sum()
        var_inactive = (delta * inactive).sum()
        penalty = c.new_zeros(())
        for num, den in ((mean_active, mean_inactive), (var_active, var_inactive)):
            if bool(den > 0):
                penalty = penalty + _balance_penalty(num / den, tau)
            elif bool(num > 0):
                penalty = penalty + 1.0  # only one kind of stable neuron: ratio 0 or infinite
        terms.append(penalty)
    return torch.stack(terms).mean()
