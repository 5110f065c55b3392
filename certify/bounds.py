"""Result types of bound propagation: intervals in centre/radius form."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Bounds:
    """An interval [centre - radius, centre + radius], elementwise; radius >= 0."""

    centre: torch.Tensor
    radius: torch.Tensor

    @property
    def lower(self) -> torch.Tensor:
        return self.centre - self.radius

    @property
    def upper(self) -> torch.Tensor:
        return self.centre + self.radius

    @staticmethod
    def from_interval(lower: torch.Tensor, upper: torch.Tensor) -> "Bounds":
        return Bounds((upper + lower) * 0.5, (upper - lower) * 0.5)


@dataclass
class IBPResult:
    """Output bounds of `ibp_bounds(..., return_layers=True)` plus the bounds IBP met on its way.

    `lower`/`upper`: (N, S) bounds of the specification (margins), or (N, K) logit bounds without
    one. `input`: the input box after clipping to [0, 1] (for L2 balls, the box that encloses the
    ball). `pre_relu[i]` and `pre_relu_names[i]`: the interval entering the i-th ReLU, in the order
    the network applies them (Shi et al. 2021's regularisers use their radii and centres).
    """

    lower: torch.Tensor
    upper: torch.Tensor
    input: Bounds
    pre_relu: list[Bounds] = field(default_factory=list)
    pre_relu_names: list[str] = field(default_factory=list)
