"""`robust train`'s trainers: natural, PGD-AT (Madry et al. 2018), TRADES (Zhang et al. 2019), and
Gaussian data augmentation (Cohen et al. 2019; `defenses.gaussian`).

- natural: minimise CE(f(x), y).
- pgd-at: minimise CE(f(x_adv), y) with x_adv = PGD maximising CE in the Linf eps ball
  (Madry et al. 2018, eq. 2.1; training on adversarial points only, as in the paper).
- trades: minimise CE(f(x), y) + beta * KL(p(x) || p(x_adv)), x_adv = PGD maximising
  KL(p(x) || p(x')) with p(x) held fixed (Zhang et al. 2019, eq. 5; beta = 6 as in their MNIST
  and CIFAR runs; KL averaged over the batch as in their code).

Choices: Adam (lr 1e-3, the foundation's natural recipe) rather than the papers' SGD, so that the
short CPU runs this tool is made for converge; the inner PGD uses `steps` steps of 2.5 * eps /
steps from a uniform random start (Madry et al. use 40 steps of 0.01 at eps 0.3 on MNIST; the
default 10 steps keeps an epoch on the bundled MNIST subset under a minute on one CPU core) and
runs in eval mode (see `defenses.inner_max`). `warmup_epochs` ramps eps linearly from 0 over the
first epochs, per batch (Gowal et al. 2018 ramp eps the same way): small CNNs trained at the full
eps = 0.3 from the first step often stall at chance accuracy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from robustcli.attacks.base import eval_mode
from robustcli.defenses.gaussian import gaussian_augmentation_loss
from robustcli.defenses.inner_max import pgd_maximize
from robustcli.core.checkpoint import Checkpointer
from robustcli.core.training_loop import StepContext, descend, train_loop

DEFENSES = ("natural", "pgd-at", "trades", "gaussian")


@dataclass(frozen=True)
class AdversarialConfig:
    defense: str = "pgd-at"
    eps: float = 0.3
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    attack_steps: int = 10
    beta: float = 6.0
    warmup_epochs: int = 0
    seed: int = 0
    sigma: float = 0.25  # std of the Gaussian augmentation in [0, 1] pixel units (defense "gaussian" only)

    def __post_init__(self) -> None:
        if self.defense not in DEFENSES:
            raise ValueError(f"unknown defense {self.defense!r}; expected one of {DEFENSES}")
        if self.defense == "gaussian" and not self.sigma > 0:
            raise ValueError(f"gaussian augmentation needs sigma > 0, got {self.sigma}")

    def run_config(self) -> dict[str, Any]:
        """The options a checkpoint records (sigma only where it matters, so runs of the other
        defenses resume from checkpoints written before it existed)."""
        config = asdict(self)
        if self.defense != "gaussian":
            del config["sigma"]
        return config


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Per-point KL(softmax(p_logits) || softmax(q_logits)), shape (N,)."""
    log_p = F.log_softmax(p_logits, 1)
    return (log_p.exp() * (log_p - F.log_softmax(q_logits, 1))).sum(1)


class RampedEps(Protocol):
    """A training config with a budget `eps` reached after `warmup_epochs` (AdvMoE's too)."""

    eps: float
    warmup_epochs: int


def eps_at(config: RampedEps, epoch: int, batch: int, batches: int) -> float:
    """The training eps at this batch: linear ramp over `warmup_epochs`, then constant."""
    if config.warmup_epochs <= 0:
        return config.eps
    progress = (epoch * batches + batch + 1) / (config.warmup_epochs * batches)
    return config.eps * min(1.0, progress)


def training_generators(seed: int, device: torch.device) -> dict[str, torch.Generator]:
    """The trainers' random streams: batch order (on the CPU, where the loader shuffles) and the
    inner attack's random starts (on the model's device), seeded `seed` and `seed + 1`."""
    return {
        "order": torch.Generator().manual_seed(seed),
        "attack": torch.Generator(device=device).manual_seed(seed + 1),
    }


def pgd_at_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int, generator: torch.Generator | None
) -> dict[str, torch.Tensor]:
    """PGD-AT's loss CE(f(x_adv), y) (Madry et al. 2018, eq. 2.1), x_adv from PGD on CE in the
    Linf eps ball, and the batch's accuracy on x_adv."""
    x_adv = pgd_maximize(
        lambda z: F.cross_entropy(model(z), y, reduction="none"), x, eps, steps=steps, generator=generator, model=model
    )
    logits_adv = model(x_adv)
    loss = F.cross_entropy(logits_adv, y)
    return {"loss": loss, "adv_acc": (logits_adv.argmax(1) == y).float().mean()}


def adversarial_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    defense: str,
    eps: float,
    attack_steps: int,
    beta: float,
    generator: torch.Generator | None,
) -> dict[str, torch.Tensor]:
    """The training loss of one batch (the model is in train mode); "loss" is what to minimise."""
    if defense == "natural":
        loss = F.cross_entropy(model(x), y)
        return {"loss": loss}
    if defense == "pgd-at":
        return pgd_at_loss(model, x, y, eps=eps, steps=attack_steps, generator=generator)
    if defense == "trades":
        with torch.no_grad(), eval_mode(model):
            p_clean = model(x)
        x_adv = pgd_maximize(
            lambda z: kl_divergence(p_clean, model(z)),
            x, eps, steps=attack_steps, generator=generator, model=model,
        )  # fmt: skip
        logits = model(x)
        logits_adv = model(x_adv)
        natural = F.cross_entropy(logits, y)
        robust = kl_divergence(logits, logits_adv).mean()
        return {
            "loss": natural + beta * robust,
            "ce": natural,
            "kl": robust,
            "adv_acc": (logits_adv.argmax(1) == y).float().mean(),
        }
    raise ValueError(f"unknown defense {defense!r}")


def train_adversarial(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: AdversarialConfig,
    *,
    checkpointer: Checkpointer | None = None,
    resume: bool = False,
    on_batch: Callable[[int, dict[str, float]], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train `model` in place on (x, y) in [0, 1] pixel space; return the per-epoch log."""
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    generators = training_generators(config.seed, device)
    if config.defense == "gaussian":
        generators["noise"] = torch.Generator(device=device).manual_seed(config.seed + 2)

    def step(xb: torch.Tensor, yb: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        if config.defense == "gaussian":
            losses = gaussian_augmentation_loss(model, xb, yb, sigma=config.sigma, generator=generators["noise"])
            descend(losses["loss"], opt, ctx)
            return {k: v.detach() for k, v in losses.items()}
        eps = eps_at(config, ctx.epoch, ctx.batch, ctx.batches)
        losses = adversarial_loss(
            model, xb, yb, defense=config.defense, eps=eps, attack_steps=config.attack_steps,
            beta=config.beta, generator=generators["attack"],
        )  # fmt: skip
        descend(losses["loss"], opt, ctx)
        return {k: v.detach() for k, v in losses.items()} | {"eps": torch.tensor(eps)}

    return train_loop(
        model, x, y, step,
        optimizers={"adam": opt}, generators=generators, epochs=config.epochs,
        batch_size=config.batch_size, run_config=config.run_config(), checkpointer=checkpointer,
        resume=resume, on_batch=on_batch, on_epoch=on_epoch,
    ).history  # fmt: skip
