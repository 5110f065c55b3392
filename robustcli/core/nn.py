"""Small modules that engines and loaders share: input normalisation, a residual block, a
concatenation of branches, the one way to run a model in eval mode for a while, and the floating
dtype a model computes in.

Plain modules (no functional tricks inside `forward`) so bound engines can walk them."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Hold `model` in eval mode inside the block, then restore the mode it had (even on error).

    Attacks, bounds and measurements run in eval mode so batch-norm uses its running statistics
    (and does not update them) and dropout is off; a trainer that calls them mid-epoch gets its
    train mode back.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_float_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype the model takes its input in: its first floating parameter's (its first
    floating buffer's when it has no parameters), float32 when it has neither."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


class Residual(nn.Module):
    """body(x) + shortcut(x); the shortcut defaults to the identity.

    A plain module (not a functional add inside a custom forward) so bound engines can walk it.
    """

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class Concat(nn.Module):
    """torch.cat([branch(x) for branch in branches], dim): branches that fork from one value and
    are joined along a feature axis (Inception blocks, `torch.cat([x, conv(x)], 1)` in DenseNets).

    `dim` counts the batch axis (1 = channels of an (N, C, H, W) tensor) and is never 0: each point
    is computed on its own. A plain module so bound engines can walk it, like `Residual`.
    """

    def __init__(self, branches: list[nn.Module], dim: int = 1):
        super().__init__()
        if dim < 1:
            raise ValueError(f"Concat joins along a feature axis (dim >= 1, batch axis excluded), got dim={dim}")
        if not branches:
            raise ValueError("Concat needs at least one branch")
        self.branches = nn.ModuleList(branches)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Normalized(nn.Module):
    """Applies (x - mean) / std before the wrapped model, so attacks work in [0, 1] pixel space.

    `dtype`: of mean and std; a float64 model gets them in float64, straight from the given numbers,
    so the network bounded is the one the numbers define, not one with mean/std rounded to float32."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float], dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model = model
        shape = (1, len(mean), 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=dtype).view(shape))
        self.register_buffer("std", torch.tensor(std, dtype=dtype).view(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


class LogProbabilities(nn.Module):
    """log p of a model whose outputs are class probabilities (a final softmax): logits of the same
    classifier (argmax and softmax unchanged, softmax(log p) = p) whose cross-entropy and margins do
    not saturate the way differences of probabilities do. Probabilities that underflowed to 0 map to
    log of the smallest normal number instead of -inf."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.model(x)
        return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))
