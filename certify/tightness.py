"""Tightness of interval bounds (Mao et al. 2023, "Understanding Certified Training with Interval
Bound Propagation", Definition 3.1): how much IBP over-approximates the exact box of a linear map.

For the network's local linearisation at the clean input x (ReLU patterns fixed at x: inactive
neurons zeroed, active ones passed; BatchNorm folded with its eval statistics; the normalisation
wrapper included; the last layer merged with the margin specification C), each margin row s is
an affine map a_s^T x' + const with a_s^T = (C W_L D_{L-1} W_{L-1} ... D_1 W_1)_s. Then

    tau_s = (|a_s|^T eps) / ((|C W_L| D_{L-1} |W_{L-1}| ... D_1 |W_1|)_s eps)

the exact Linf radius of the linear map over the eps box divided by IBP's radius for the same
linear map. tau is in (0, 1]; 1 means IBP is exact (a single linear layer), and it is independent
of eps. Cost: S = K - 1 backward passes for the numerators (rows of the input Jacobian, exact
because the network is piecewise linear) and one forward pass of radii for the denominators.

At initialisation (`at_initialisation`): Mao et al. report tau for freshly initialised networks
(their Figure 3 and Table 1), where it depends only on depth, width and the init distribution.
Training changes tau a lot, so a trained network's tau is only comparable with theirs after
measuring the same architecture at init: a copy with every `reset_parameters()` re-run (PyTorch's
default init, BatchNorm running statistics reset), seeded explicitly.

Choices: the ball is not clipped to [0, 1] (tightness is a property of the weights, as in the
paper); (point, margin) pairs whose IBP radius is 0 (every path inactive) are left out of the
mean and median, which are taken over all remaining (point, margin) pairs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from robustcli.attacks.base import eval_mode
from robustcli.certify.ibp import propagate


@dataclass
class Tightness:
    tau: torch.Tensor  # (N, S): per point and margin row; nan where undefined
    exact_radius: torch.Tensor  # (N, S): |a_s|^T eps, the exact Linf radius of the local linear map
    ibp_radius: torch.Tensor  # (N, S): IBP's radius for the same linear map

    @property
    def mean(self) -> float:
        return self.tau.nanmean().item()

    @property
    def median(self) -> float:
        return self.tau.nanmedian().item()


def spec_jacobian(model: nn.Module, x: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
    """(N, S, D): d (C f(x))_s / dx per point, one backward pass per row s (model in eval mode)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = torch.einsum("nsk,nk->ns", spec.to(x.dtype), model(x))
        rows = [
            torch.autograd.grad(out[:, s].sum(), x, retain_graph=s < out.shape[1] - 1)[0].flatten(1)
            for s in range(out.shape[1])
        ]
    return torch.stack(rows, 1)


def tightness(model: nn.Module, x: torch.Tensor, spec: torch.Tensor, eps: float = 1.0) -> Tightness:
    """Mao et al. 2023's tightness per point and margin row at the clean inputs x (Linf).

    spec: C (N, S, K), e.g. `margin_spec(y, K)`. The model is evaluated in eval mode.
    """
    with eval_mode(model):
        exact = eps * spec_jacobian(model, x, spec).abs().sum(2)
        with torch.no_grad():
            out, _ = propagate(model, x.detach(), eps, "linf", spec, relu_mode="local", clip=False, method="tightness")
    ibp = out.radius
    tau = torch.where(ibp > 0, exact / ibp.clamp_min(torch.finfo(ibp.dtype).tiny), torch.full_like(ibp, float("nan")))
    return Tightness(tau, exact, ibp)


def at_initialisation(model: nn.Module, seed: int) -> nn.Module:
    """A copy of `model` with every layer's default initialisation re-run (`reset_parameters`),
    seeded by `seed`; the model itself and the caller's random state are left unchanged.

    Weights are drawn on the CPU so a seed gives the same network on every device, then moved to
    the device of `model`. Modules without parameters (ReLU, Flatten, a normalisation wrapper's
    buffers) keep what they hold. Raises ValueError if no layer can be re-initialised.
    """
    device = next(model.parameters()).device
    fresh = copy.deepcopy(model).to("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        resets = [m.reset_parameters() for m in fresh.modules() if callable(getattr(m, "reset_parameters", None))]
    if not resets:
        raise ValueError("no layer of this model has reset_parameters(), so it cannot be re-initialised")
    return fresh.to(device)


def deep_linear_tau(width: int, depth: int) -> float:
    """Mao et al. 2023, Theorem 4.2 (Gaussian init, large width): tau ~ (pi / (2 w))^((L - 1) / 2)."""
    return (torch.pi / (2 * width)) ** ((depth - 1) / 2)
