"""A sparsely gated mixture-of-experts CNN (MoE-CNN), the model of AdvMoE (Zhang et al. 2023).

`MoEConv2d` splits a convolution's output channels into `experts` groups (experts). A small
router per layer looks at the layer's input and picks the top-k experts per input; only those are
computed (the others' output channels are zero), each scaled by its gate. Choices where the paper
leaves room:

- Router: average-pool the layer input to 4x4, then one linear layer to E logits (the paper's
  code uses one ResNet router for the whole network; a per-layer router on the layer input is
  what the task asks for and stays cheap).
- Gates: softmax over the k selected logits, times k (so a layer's output scale matches a dense
  layer's when routing is uniform); the router learns through the gates, top-k itself has no
  gradient.
- Skipping: each expert runs only on the inputs that selected it (indexing), in training and at
  inference, so unselected experts cost nothing and get no gradient. The next layer still
  convolves all input channels (zeros included): `count_macs` reports what is actually computed.

Architectures (same widths as the dense built-ins, so the comparison is like for like): pass
`--arch mnist_moe_cnn_e4_k2` (or `digits_moe_cnn_e4_k2`; any E and k) to any command; models are
saved under `robustcli.defenses.moe:mnist_moe_cnn_e4_k2`, and the CLI resolves both spellings as
built-in names (a model file may choose them; it may not choose other code). They are not added to
`robustcli.archs.ARCHS` on purpose: those are plain `nn.Sequential` stacks that bound engines
(IBP, CROWN) walk layer by layer, and a routed layer is not something they can bound.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from robustcli.core.nn import eval_mode


class MoEConv2d(nn.Module):
    """A conv layer whose output channels are split into experts chosen per input by a router."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, stride: int, padding: int, experts: int, top_k: int,
        router_pool: int = 4,
    ):  # fmt: skip
        super().__init__()
        if experts < 1 or out_ch % experts:
            raise ValueError(f"{out_ch} output channels do not split into {experts} experts")
        if not 1 <= top_k <= experts:
            raise ValueError(f"top-k must lie in 1..{experts}, got {top_k}")
        self.out_ch, self.num_experts, self.top_k = out_ch, experts, top_k
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        width = out_ch // experts
        self.experts = nn.ModuleList(
            nn.Conv2d(in_ch, width, kernel_size, stride=stride, padding=padding) for _ in range(experts)
        )
        self.router = nn.Sequential(nn.AdaptiveAvgPool2d(router_pool), nn.Flatten(), nn.Linear(in_ch * router_pool**2, experts))
        # Set by each forward: the router's log-probabilities (N, E) (with grad, for AdvMoE's router
        # KL) and the selection mask (N, E).
        self.routing: torch.Tensor | None = None
        self.selected: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        logits = self.router(x)
        self.routing = F.log_softmax(logits, 1)
        top = logits.topk(self.top_k, dim=1).indices  # (N, k)
        gates = F.softmax(logits.gather(1, top), 1) * self.top_k  # (N, k)
        self.selected = torch.zeros(n, self.num_experts, dtype=torch.bool, device=x.device).scatter_(1, top, True)
        ho = (h + 2 * self.padding - self.kernel_size) // self.stride + 1
        wo = (w + 2 * self.padding - self.kernel_size) // self.stride + 1
        width = self.out_ch // self.num_experts
        out = x.new_zeros(n, self.out_ch, ho, wo)
        for e, conv in enumerate(self.experts):
            rows, slot = (top == e).nonzero(as_tuple=True)
            if len(rows) == 0:
                continue  # skipped: not computed, no gradient
            y = conv(x[rows]) * gates[rows, slot].view(-1, 1, 1, 1)
            out = out.index_put((rows, torch.arange(e * width, (e + 1) * width, device=x.device)[:, None]), y.transpose(0, 1))
        return out


def moe_layers(model: nn.Module) -> list[MoEConv2d]:
    return [m for m in model.modules() if isinstance(m, MoEConv2d)]


def router_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in moe_layers(model) for p in m.router.parameters()]


def expert_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Everything but the routers: experts and the dense backbone (the FC head)."""
    routers = {id(p) for p in router_parameters(model)}
    return [p for p in model.parameters() if id(p) not in routers]


def routing_log_probs(model: nn.Module) -> list[torch.Tensor]:
    """The router log-probabilities of every MoE layer from the model's last forward pass."""
    return [m.routing for m in moe_layers(model)]


def mnist_moe_cnn(experts: int = 4, top_k: int = 2) -> nn.Sequential:
    """mnist-cnn (conv16-conv32-fc100, 4x4 stride-2 convs) with both convs as MoE layers."""
    return nn.Sequential(
        MoEConv2d(1, 16, 4, 2, 1, experts, top_k), nn.ReLU(),
        MoEConv2d(16, 32, 4, 2, 1, experts, top_k), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10),
    )  # fmt: skip


def digits_moe_cnn(experts: int = 4, top_k: int = 2) -> nn.Sequential:
    """digits-cnn (conv16-fc64) with the conv as an MoE layer."""
    return nn.Sequential(
        MoEConv2d(1, 16, 4, 2, 1, experts, top_k), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


DENSE_TWIN = {"mnist": "mnist-cnn", "digits": "digits-cnn"}
_FACTORY = re.compile(r"(mnist|digits)_moe_cnn_e(\d+)_k(\d+)")


def arch_name(data: str, experts: int, top_k: int) -> str:
    """The `--arch` string under which a model is saved and loaded again."""
    return f"robustcli.defenses.moe:{data}_moe_cnn_e{experts}_k{top_k}"


def __getattr__(name: str) -> Callable[[], nn.Module]:
    """`mnist_moe_cnn_e4_k2` etc.: factories for `build_arch("robustcli.defenses.moe:...")`."""
    m = _FACTORY.fullmatch(name)
    if m is None:
        raise AttributeError(name)
    build = mnist_moe_cnn if m.group(1) == "mnist" else digits_moe_cnn
    experts, top_k = int(m.group(2)), int(m.group(3))
    return lambda: build(experts, top_k)


@contextmanager
def count_macs(model: nn.Module) -> Iterator[dict[str, int]]:
    """Count multiply-accumulates of every Conv2d and Linear call actually executed in the block.

    Hooks fire only for layers that run, so skipped experts are not counted; router layers are.
    """
    counter = {"macs": 0}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            per_out = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_out = module.in_features
        counter["macs"] += output.numel() * per_out

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        yield counter
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def macs_per_input(model: nn.Module, x: torch.Tensor) -> float:
    """Average MACs per input actually computed by `model` on `x`, in eval mode."""
    with eval_mode(model), count_macs(model) as c:
        model(x.to(next(model.parameters()).device))
    return c["macs"] / len(x)
