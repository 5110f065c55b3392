"""Schedules of certified training, as pure functions of the step (so resuming needs no state).

- `SmoothedEpsSchedule`: eps = 0 for `start` epochs, then a smoothed ramp over `warmup` epochs,
  then constant (Shi et al. 2021, sec. 4; the shape of auto_LiRPA's SmoothedScheduler). The ramp
  is a polynomial a * t^beta for the first `mid` fraction (a quarter by default, beta = 4), then
  linear, joined with matching value and slope, and reaching eps_max exactly at the ramp's end.
  Per step: step k (0-based, global) trains at eps(k); the first ramp step is already > 0 and the
  last one is eps_max.
- `step_lr`: lr multiplied by `decay` at each milestone epoch (Adam 5e-4, x0.2 in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SmoothedEpsSchedule:
    eps_max: float
    start: int  # epochs at eps = 0
    warmup: int  # epochs of ramp
    steps_per_epoch: int
    beta: float = 4.0
    mid: float = 0.25

    def __post_init__(self) -> None:
        if self.eps_max < 0 or self.start < 0 or self.warmup < 0 or self.steps_per_epoch < 1:
            raise ValueError("eps_max, start and warmup must be >= 0 and steps_per_epoch >= 1")
        if not 0 < self.mid <= 1 or self.beta < 1:
            raise ValueError("mid must lie in (0, 1] and beta must be >= 1")

    @property
    def ramp_start(self) -> int:
        return self.start * self.steps_per_epoch

    @property
    def ramp_steps(self) -> int:
        return self.warmup * self.steps_per_epoch

    def __call__(self, step: int) -> float:
        t = step - self.ramp_start + 1  # steps into the ramp, counting this one
        if t <= 0:
            return 0.0
        total = self.ramp_steps
        if t >= total:
            return float(self.eps_max)
        m = self.mid * total
        # a t^beta up to m, then linear with the same slope a beta m^(beta-1), ending at eps_max.
        a = self.eps_max / (m**self.beta + self.beta * m ** (self.beta - 1) * (total - m))
        if t <= m:
            return float(a * t**self.beta)
        return float(a * m**self.beta + a * self.beta * m ** (self.beta - 1) * (t - m))

    def warming_up(self, step: int) -> bool:
        """True before eps reaches eps_max: the eps = 0 epochs and the ramp (the window of Shi et
        al.'s warm-up regularisers, whose code runs them from the first epoch)."""
        return self.eps_max > 0 and self(step) < self.eps_max

    def ramping(self, step: int) -> bool:
        """True while eps is strictly between 0 and eps_max (the warmup regularisers' window)."""
        return 0.0 < self(step) < self.eps_max


def step_lr(lr: float, epoch: int, milestones: tuple[int, ...], decay: float) -> float:
    """lr for 0-based `epoch`: multiplied by `decay` once for each milestone <= epoch."""
    return lr * decay ** sum(1 for m in milestones if epoch >= m)
