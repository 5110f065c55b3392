"""Bounds of C f(x) + d over a per-element input box through auto_LiRPA, for graph models the native
CROWN engines do not cover (max pooling, smooth activations; ReLU graphs with residual adds and
concatenations are bounded natively by certify/dag_bounds.py).

Uses certify/lirpa.py's compat shim and model rewrites, with the box as
`PerturbationLpNorm(norm=inf, x_L=lower, x_U=upper)`; the methods are auto_LiRPA's IBP, CROWN and
alpha-CROWN. auto_LiRPA computes in the model's dtype: a float64 model (an ONNX file of float64
weights) is bounded in float64 with its own weights. auto_LiRPA 0.3 builds some of its constants
(e.g. the lookup tables of its sigmoid/tanh relaxations) in torch's default dtype and then fails
on a float64 model ("Index put requires the source and destination dtypes match"), so the bounds
of a float64 model are computed with the default dtype set to float64 for the call
(`default_dtype`), and set back after.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from robustcli.core.errors import InputError


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """torch's default floating dtype set to `dtype` inside the block, restored after."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def lirpa_box_lower(
    model: nn.Module, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, d: torch.Tensor, method: str,
    *, alpha_iterations: int = 20,
) -> torch.Tensor:
    """Lower bound (1, K) of C f(x) + d for x in [lo, hi] (each (1, *input_shape)); raises
    InputError when auto_LiRPA is missing or cannot handle the model."""
    p = next(model.parameters(), None)
    dtype = p.dtype if p is not None else torch.float32
    if dtype == torch.float64:
        with default_dtype(torch.float64):
            return _lirpa_box_lower(model, lo, hi, C, d, method, dtype, alpha_iterations)
    return _lirpa_box_lower(model, lo, hi, C, d, method, dtype, alpha_iterations)


def _lirpa_box_lower(model: nn.Module, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
                     method: str, dtype: torch.dtype, alpha_iterations: int) -> torch.Tensor:
    import numpy as np

    from robustcli.certify.lirpa import refuse_unsound_relaxations, auto_lirpa, lirpa_friendly

    lo, hi = lo.to(dtype), hi.to(dtype)
    centre = (lo + hi) / 2
    lirpa = auto_lirpa(method)
    # conv_mode "matrix": 0.3's default "patches" mode asserts on residual Adds of flat tensors;
    # the sparse options avoid its alpha-CROWN shape bugs (see certify/lirpa.py).
    opts = {"conv_mode": "matrix", "sparse_features_alpha": False, "sparse_spec_alpha": False,
            "sparse_intermediate_bounds": False, "optimize_bound_args": {"iteration": alpha_iterations}}
    try:
        module = lirpa.BoundedModule(lirpa_friendly(model, centre), centre, bound_opts=opts, device=str(centre.device))
    except Exception as e:  # noqa: BLE001 - auto_LiRPA's tracer raises anything on a model it cannot parse
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"auto_LiRPA {method} failed on this model ({type(e).__name__}: {first[:200]})") from None
    if method != "ibp":
        refuse_unsound_relaxations(module, method, instead="only interval bounds (the ibp stage) hold for it")
    try:
        ptb = lirpa.PerturbationLpNorm(norm=np.inf, eps=float((hi - lo).max()) / 2, x_L=lo, x_U=hi)
        name = {"ibp": "IBP", "crown": "CROWN", "alpha-crown": "alpha-CROWN"}[method]
        lower, _ = module.compute_bounds(x=(lirpa.BoundedTensor(centre, ptb),), C=C.to(dtype)[None], method=name,
                                         bound_upper=False)
    except Exception as e:  # noqa: BLE001 - auto_LiRPA raises anything on a model it cannot handle
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"auto_LiRPA {method} failed on this model ({type(e).__name__}: {first[:200]})") from None
    return lower.detach().double() + d.to(lower.device, torch.float64)
