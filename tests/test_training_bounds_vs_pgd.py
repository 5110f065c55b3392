"""The bounds certified training minimises are sound where it matters: below the smallest margin
a strong PGD finds in the same input box, for every point and every margin, for native IBP and for
CROWN-IBP (auto_LiRPA). Training in train mode bounds the function whose BatchNorm layers use the
clean batch's statistics (Shi et al. 2021, sec. 3.3), so PGD attacks exactly that function.

The check has power: a bound computed on half the box (the bug of a halved input radius) is
above the margin PGD finds in the full box for some points, so this test would fail on it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robustcli.certify.ibp import ibp_bounds
from robustcli.certify.lirpa import lirpa_available
from robustcli.certify.spec import margin_spec
from robustcli.commands.train_ibp import build_model
from robustcli.data import load_dataset

EPS = 0.02
N = 48


@pytest.fixture(scope="module")
def setup():
    """A briefly IBP-trained model: its IBP bounds are tight enough (gap to the clean margin
    about twice PGD's drop) that a halved box is caught; an untrained one's are 5x looser."""
    from robustcli.certify.training import recipe_config, train_ibp

    train = load_dataset("digits", "train")
    model = build_model("digits-mlp-bn", "digits", (), (), "ibp", seed=0)
    train_ibp(model, train.x, train.y, recipe_config("short", 0.1, 6, warmup=2, batch_size=64))
    d = load_dataset("digits", "test").head(N)
    return model.train(), d.x, d.y, margin_spec(d.y, 10)


def clean_statistics_function(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A copy of `model` in eval mode whose BatchNorm layers normalise with the statistics the
    train-mode forward of the clean batch `x` uses (batch mean, biased batch variance)."""
    frozen = copy.deepcopy(model).train()
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def grab(module, inputs, output):
        h = inputs[0]
        dims = [0] + list(range(2, h.dim()))
        stats[module] = (h.mean(dims).detach(), h.var(dims, unbiased=False).detach())

    bns = [m for m in frozen.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    handles = [m.register_forward_hook(grab) for m in bns]
    with torch.no_grad():
        frozen(x)
    for h in handles:
        h.remove()
    for m in bns:
        m.running_mean, m.running_var = stats[m]
    return frozen.eval()


def pgd_min_margins(f: nn.Module, x: torch.Tensor, spec: torch.Tensor, eps: float, steps: int = 60) -> torch.Tensor:
    """(N, K) smallest value of each margin spec[n, k] @ f(x') PGD finds in [x - eps, x + eps] ∩ [0, 1],
    one attack per (point, margin), from the clean point and two random starts; best over all."""
    n, k = spec.shape[:2]
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    lo_k, hi_k = lo.repeat_interleave(k, 0), hi.repeat_interleave(k, 0)
    rows = spec.reshape(n * k, 1, -1)  # one margin row per attacked copy
    g = torch.Generator().manual_seed(0)
    best = torch.full((n * k,), float("inf"))
    for start in range(3):
        z = x.repeat_interleave(k, 0).clone()
        if start:
            z = lo_k + (hi_k - lo_k) * torch.rand(z.shape, generator=g)
        for t in range(steps):
            z.requires_grad_(True)
            margin = torch.einsum("nsk,nk->n", rows, f(z))
            best = torch.minimum(best, margin.detach())
            (grad,) = torch.autograd.grad(margin.sum(), z)
            step = eps / 4 if t < steps // 2 else eps / 20
            z = torch.minimum(torch.maximum(z.detach() - step * grad.sign(), lo_k), hi_k)
        with torch.no_grad():
            best = torch.minimum(best, torch.einsum("nsk,nk->n", rows, f(z)))
    return best.reshape(n, k)


def _check(lower_full: torch.Tensor, lower_half: torch.Tensor, pgd: torch.Tensor) -> None:
    assert torch.isfinite(pgd).all()
    # sound: below PGD's smallest margin for every point and margin
    assert (lower_full <= pgd + 1e-4).all(), (lower_full - pgd).max()
    # and the comparison has teeth: the half-box bound is violated by points PGD finds in the box
    violated = (lower_half > pgd + 1e-4).any(dim=1)
    assert violated.float().mean() > 0.25, violated.float().mean()


def test_native_ibp_training_bounds_lie_below_pgd_margins(setup):
    model, x, y, spec = setup
    f = clean_statistics_function(model, x)
    pgd = pgd_min_margins(f, x, spec, EPS)
    lower_full, _ = ibp_bounds(model, x, EPS, "linf", spec)  # train mode: clean-batch BN statistics
    lower_half, _ = ibp_bounds(model, x, EPS / 2, "linf", spec)
    _check(lower_full.detach(), lower_half.detach(), pgd)


@pytest.mark.skipif(not lirpa_available(), reason="auto_LiRPA not installed")
def test_crown_ibp_training_bounds_lie_below_pgd_margins(setup):
    from robustcli.certify.crown_ibp_training import CrownIBPTrainingBounds

    model, x, y, spec = setup
    f = clean_statistics_function(model, x)
    pgd = pgd_min_margins(f, x, spec, EPS)
    bounds = CrownIBPTrainingBounds(model, x)
    lower_full = bounds(model, x, EPS, "linf", spec).detach()
    lower_half = bounds(model, x, EPS / 2, "linf", spec).detach()
    _check(lower_full, lower_half, pgd)
    # CROWN-IBP is the tighter bound here (why training uses it early in the ramp)
    ibp_lower, _ = ibp_bounds(model, x, EPS, "linf", spec)
    assert lower_full.mean() > ibp_lower.detach().mean()
