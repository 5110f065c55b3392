"""Certified training with interval bounds: the short-warmup recipe of Shi et al. 2021, and vanilla IBP.

Per step at eps_t (see `certify.schedule`), as Shi et al. 2021 train (their paper, sec. 3.3 and 4,
and their code's loss):
  natural   = CE(model(x), y)                       (train mode; updates BN running statistics)
  robust    = CE([0, -lower margins], 0)            (lower bounds of C f(x') over the eps_t ball,
                                                     last layer merged into C = margin_spec)
  loss      = natural                               while eps_t = 0
            = robust                                once eps_t > 0
  + lambda * (1 - eps_t / eps_max) * (L_tight + L_relu)   while eps_t < eps_max (regularize on)
The warm-up regularisers (`certify.regularizers`) also run in the eps = 0 epochs, on intervals
of a tiny box (`reg_min_eps` = 1e-6, their code's `min_eps_reg`), with the full weight lambda.
Options beyond the paper: `kappa` keeps a constant share of natural CE once eps > 0
(loss = kappa * natural + (1 - kappa) * robust), and `mix_natural` ramps that share from 1 to
kappa with eps_t / eps_max (Gowal et al. 2018's mixing); both are off by default. Adam,
gradient-norm clipping, lr decay at milestone epochs. BatchNorm is bounded with the clean
batch's statistics in train mode (`certify.ibp`).

`method="crown-ibp"` (Zhang et al. 2020) bounds the loss's margins with
beta_t * CROWN-IBP + (1 - beta_t) * IBP, beta_t = 1 - eps_t / eps_max (their schedule: CROWN-IBP
early, pure IBP at the end), through auto_LiRPA (`certify.lirpa`); the regularisers still use
the native IBP intervals.

The step runs in the shared loop (`core.training_loop`), which owns data order (full batches
only), the per-epoch checkpoint, resume, the divergence check and torchrun data parallelism; the
eps and lr schedules here are pure functions of the step and epoch, so a run killed at any point
and resumed ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robustcli.certify.ibp import ibp_bounds, refuse_untrainable
from robustcli.certify.regularizers import input_radius, relu_balance_loss, tightness_loss
from robustcli.certify.schedule import SmoothedEpsSchedule, step_lr
from robustcli.certify.spec import margin_spec, verified
from robustcli.core.checkpoint import Checkpointer
from robustcli.core.nn import eval_mode
from robustcli.core.training_loop import StepContext, descend, train_loop

RECIPES = ("short", "vanilla")
METHODS = ("ibp", "crown-ibp")


@dataclass
class IBPTrainConfig:
    """Every knob of a run. `recipe_config` fills in the recipe's defaults for a number of epochs."""

    eps: float
    epochs: int
    start: int  # epochs at eps = 0
    warmup: int  # epochs of eps ramp
    lr_milestones: tuple[int, ...]
    norm: str = "linf"
    method: str = "ibp"
    init: str = "ibp"  # "ibp" (Shi et al.) or "default" (torch's)
    regularize: bool = True
    reg_lambda: float = 0.5
    tau: float = 0.5
    kappa: float = 0.0  # weight of natural CE once eps > 0 (at eps_max when mix_natural)
    mix_natural: bool = False  # ramp natural CE's weight from 1 to kappa with eps (Gowal et al. 2018)
    reg_min_eps: float = 1e-6  # eps of the regularisers' bounds in the eps = 0 epochs (Shi et al.'s code)
    lr: float = 5e-4
    lr_decay: float = 0.2
    grad_clip: float = 10.0
    batch_size: int = 128
    seed: int = 0

    def schedule(self, steps_per_epoch: int) -> SmoothedEpsSchedule:
        return SmoothedEpsSchedule(self.eps, self.start, self.warmup, steps_per_epoch)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d


def recipe_config(recipe: str, eps: float, epochs: int, **overrides) -> IBPTrainConfig:
    """The defaults of a recipe for `epochs` epochs; `overrides` (not None) win.

    short (Shi et al. 2021, their MNIST run scaled to `epochs`): 1 epoch at eps 0, ramp over
      2/7 of the run (20 of 70), lr decay at 5/7 and 6/7 (50 and 60 of 70), IBP init,
      regularisers on, BN expected in the architecture.
    vanilla (Gowal et al. 2018 / CROWN-IBP style): default init, no regularisers, a long ramp
      over half the run after 1 epoch at eps 0 (CROWN-IBP ramps 50 epochs, 2.5x the short 20),
      the same lr decay points.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {RECIPES}")
    if epochs < 1:
        raise ValueError("epochs must be >= 1")
    start = min(1, epochs - 1)
    ramp_fraction = 2 / 7 if recipe == "short" else 1 / 2
    warmup = max(1, round(epochs * ramp_fraction)) if epochs > 1 else 0
    milestones = tuple(sorted({max(start + warmup, round(epochs * 5 / 7)), max(start + warmup, round(epochs * 6 / 7))}))
    milestones = tuple(m for m in milestones if m < epochs)
    base = dict(
        eps=eps,
        epochs=epochs,
        start=start,
        warmup=warmup,
        lr_milestones=milestones,
        init="ibp" if recipe == "short" else "default",
        regularize=recipe == "short",
    )
    base.update({k: v for k, v in overrides.items() if v is not None})
    base["lr_milestones"] = tuple(int(m) for m in base["lr_milestones"])
    return IBPTrainConfig(**base)


@dataclass
class EpochStats:
    epoch: int  # 0-based
    eps: float  # eps at the epoch's last step
    lr: float
    loss: float
    natural_loss: float
    robust_loss: float
    regularizer: float
    train_accuracy: float  # on the training batches, train mode
    holdout_accuracy: float  # clean, eval mode (nan without a held-out set)
    holdout_verified: float  # IBP verified at eps_max, eval mode (nan without a held-out set)
    time_s: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    model: nn.Module
    history: list[EpochStats] = field(default_factory=list)
    resumed_from: int = 0  # first epoch run in this call
    steps_per_epoch: int = 0


BoundFn = Callable[[nn.Module, torch.Tensor, float, str, torch.Tensor], torch.Tensor]


def natural_weight(config: IBPTrainConfig, progress: float) -> float:
    """Weight of natural CE at eps_t = progress * eps_max > 0: `kappa` (0 by default: the robust
    loss alone, as Shi et al. 2021 train), or with `mix_natural` Gowal et al. 2018's ramp
    1 - (1 - kappa) * progress."""
    if config.mix_natural:
        return 1.0 - (1.0 - config.kappa) * progress
    return config.kappa


def robust_ce(lower: torch.Tensor) -> torch.Tensor:
    """CE of the logit-like vector [0, -lower margins] against index 0 (Wong & Kolter 2018; Gowal et al.)."""
    z = torch.cat([lower.new_zeros(len(lower), 1), -lower], dim=1)
    return F.cross_entropy(z, torch.zeros(len(lower), dtype=torch.long, device=lower.device))


@torch.no_grad()
def ibp_verified_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf", batch_size: int = 500
) -> tuple[float, float]:
    """(clean accuracy, IBP-verified accuracy) in eval mode; restores the model's mode."""
    device = next(model.parameters()).device
    correct = certified = 0
    with eval_mode(model):
        for i in range(0, len(y), batch_size):
            xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            logits = model(xb)
            ok = logits.argmax(1) == yb
            lower, _ = ibp_bounds(model, xb, eps, norm, margin_spec(yb, logits.shape[1]))
            correct += ok.sum().item()
            certified += (ok & verified(lower)).sum().item()
    n = max(len(y), 1)
    return correct / n, certified / n


def num_classes_of(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), eval_mode(model):
        k = int(model(x[:1]).shape[1])
    return k


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Full batches only: the last partial batch is dropped (BatchNorm needs > 1 point per batch)."""
    return max(1, n_train // batch_size)


def train_ibp(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: IBPTrainConfig,
    *,
    holdout: tuple[torch.Tensor, torch.Tensor] | None = None,
    checkpointer: Checkpointer | None = None,
    resume: bool = False,
    crown_ibp_bounds: BoundFn | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    on_resume: Callable[[dict[str, tuple]], None] | None = None,
    on_batch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train `model` (already initialised, on its device) in place on pixel-space data x, y.

    The certified-training step in the shared loop (`core.training_loop`): data order, per-epoch
    checkpoint, resume, divergence check and torchrun data parallelism come from there.
    holdout: a (x, y) batch for the per-epoch clean and IBP-verified accuracy at eps_max.
    checkpointer: where the per-epoch checkpoint and the JSON-lines log go; with resume=True the
      run continues from its checkpoint (raises InputError when there is none).
    crown_ibp_bounds: (model, x, eps, norm, C) -> lower margin bounds; required for method crown-ibp.
    on_epoch: called after each completed (and checkpointed) epoch.
    on_batch: called after each step with (points, the step's losses).
    on_resume: called after a resume with {option: (checkpoint's value, this run's value)} for
      every option that differs (an empty dict when none does); changed options are allowed (for
      example a lower lr after a divergence) but break the equality with an uninterrupted run.
    Raises InputError when the loss turns NaN/inf (the last good checkpoint stays).
    """
    if config.method == "crown-ibp" and crown_ibp_bounds is None:
        raise ValueError("method crown-ibp needs crown_ibp_bounds")
    refuse_untrainable(model)
    device = next(model.parameters()).device
    n = len(y)
    if n < 2:
        raise ValueError("training needs at least 2 points")
    batch_size = min(config.batch_size, n)
    spe = steps_per_epoch(n, batch_size)
    schedule = config.schedule(spe)
    classes = num_classes_of(model, x[:1].to(device))
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    generators = {"order": torch.Generator().manual_seed(config.seed)}

    def set_lr(epoch: int) -> None:
        for group in opt.param_groups:
            group["lr"] = step_lr(config.lr, epoch, config.lr_milestones, config.lr_decay)

    def step(xb: torch.Tensor, yb: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        eps_t = schedule(ctx.step)
        loss, parts, logits = _step_loss(model, xb, yb, eps_t, ctx.step, schedule, config, classes, crown_ibp_bounds)
        # a non-finite loss still steps (every rank must reach the collective); the loop then
        # stops the run before any checkpoint holds the damaged weights
        descend(loss, opt, ctx, clip_norm=config.grad_clip)
        natural, robust, reg = parts
        return {
            "loss": loss.detach(),
            "natural_loss": torch.tensor(natural),
            "robust_loss": torch.tensor(robust),
            "regularizer": torch.tensor(reg),
            "train_accuracy": (logits.argmax(1) == yb).float().mean(),
            "eps": torch.tensor(eps_t),
        }

    def summarize(record: dict) -> dict:
        epoch = record["epoch"]
        if holdout is not None and len(holdout[1]):
            hold_acc, hold_ver = ibp_verified_accuracy(model, holdout[0], holdout[1], config.eps, config.norm)
        else:
            hold_acc = hold_ver = math.nan
        return EpochStats(
            epoch=epoch,
            eps=schedule((epoch + 1) * spe - 1),
            lr=opt.param_groups[0]["lr"],
            loss=record["loss"],
            natural_loss=record["natural_loss"],
            robust_loss=record["robust_loss"],
            regularizer=record["regularizer"],
            train_accuracy=record["train_accuracy"],
            holdout_accuracy=hold_acc,
            holdout_verified=hold_ver,
            time_s=record["time_s"],
        ).as_dict()

    run = train_loop(
        model, x, y, step, optimizers={"adam": opt}, generators=generators, epochs=config.epochs,
        batch_size=batch_size, run_config=config.as_dict(), drop_last=True, checkpointer=checkpointer,
        resume=resume, on_resume=on_resume, epoch_start=set_lr, epoch_end=summarize, on_batch=on_batch,
        on_epoch=None if on_epoch is None else (lambda record: on_epoch(EpochStats(**record))),
    )  # fmt: skip
    history = [EpochStats(**record) for record in run.history[run.first_epoch :]]
    return TrainResult(model, history=history, resumed_from=run.first_epoch, steps_per_epoch=spe)


def _step_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps_t: float,
    step: int,
    schedule: SmoothedEpsSchedule,
    config: IBPTrainConfig,
    classes: int,
    crown_ibp_bounds: BoundFn | None,
) -> tuple[torch.Tensor, tuple[float, float, float], torch.Tensor]:
    """(loss, (natural, robust, regulariser) as floats, clean logits) for one batch."""
    logits = model(x)
    natural = F.cross_entropy(logits, y)
    warming_up = config.regularize and config.reg_lambda > 0 and config.eps > 0 and schedule.warming_up(step)
    if (eps_t <= 0 or config.eps <= 0) and not warming_up:
        return natural, (natural.item(), math.nan, 0.0), logits
    spec = margin_spec(y, classes, dtype=x.dtype)
    # at eps_t = 0 the regularisers still need intervals: Shi et al.'s code bounds a tiny box
    res = ibp_bounds(model, x, max(eps_t, config.reg_min_eps), config.norm, spec, return_layers=True)
    progress = eps_t / config.eps if config.eps > 0 else 0.0
    if eps_t > 0 and config.eps > 0:
        lower = res.lower
        if config.method == "crown-ibp":
            beta = 1.0 - progress
            if beta > 0:
                lower = beta * crown_ibp_bounds(model, x, eps_t, config.norm, spec) + (1 - beta) * lower
        robust = robust_ce(lower)
        kappa_t = natural_weight(config, progress)
        loss = robust if kappa_t == 0 else kappa_t * natural + (1 - kappa_t) * robust
        robust_value = robust.item()
    else:
        loss, robust_value = natural, math.nan
    reg_value = 0.0
    if warming_up:
        reg = tightness_loss(res.pre_relu, input_radius(res, model), config.tau) + relu_balance_loss(
            res.pre_relu, config.tau
        )
        weighted = config.reg_lambda * (1 - progress) * reg
        loss = loss + weighted
        reg_value = weighted.item()
    return loss, (natural.item(), robust_value, reg_value), logits
