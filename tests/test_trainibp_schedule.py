"""Schedules of certified training: the smoothed eps ramp, lr decay and the recipes' defaults."""

from __future__ import annotations

import pytest

from robustcli.certify.schedule import SmoothedEpsSchedule, step_lr
from robustcli.certify.training import recipe_config


def test_eps_schedule_shape():
    spe = 10
    s = SmoothedEpsSchedule(0.3, start=2, warmup=4, steps_per_epoch=spe)
    eps = [s(k) for k in range(8 * spe)]
    assert all(e == 0 for e in eps[: 2 * spe])  # `start` epochs at 0
    ramp = eps[2 * spe : 6 * spe]
    assert ramp[0] > 0 and ramp[-1] == pytest.approx(0.3)
    assert all(b >= a for a, b in zip(ramp, ramp[1:]))  # monotone
    assert all(e == 0.3 for e in eps[6 * spe :])  # constant afterwards
    # Polynomial (t^4) over the first quarter: at t = 5 (of m = 10) the value is 1/16 of eps(m).
    assert ramp[4] == pytest.approx(ramp[9] / 16, rel=1e-9)
    # Linear afterwards, with the slope continuing the polynomial's at the join.
    diffs = [b - a for a, b in zip(ramp[9:], ramp[10:])]
    assert max(diffs) - min(diffs) < 1e-12
    slope_at_m = 4 * ramp[9] / 10  # d/dt a t^4 = 4 a t^3 = 4 eps(m) / m
    assert diffs[0] == pytest.approx(slope_at_m, rel=1e-9)
    assert s.ramping(2 * spe) and not s.ramping(2 * spe - 1) and not s.ramping(6 * spe - 1)


def test_eps_schedule_without_warmup_jumps_to_eps_max():
    s = SmoothedEpsSchedule(0.1, start=1, warmup=0, steps_per_epoch=5)
    assert [s(k) for k in range(7)] == [0, 0, 0, 0, 0, 0.1, 0.1]


def test_step_lr():
    assert step_lr(5e-4, 0, (5, 8), 0.2) == 5e-4
    assert step_lr(5e-4, 5, (5, 8), 0.2) == pytest.approx(1e-4)
    assert step_lr(5e-4, 9, (5, 8), 0.2) == pytest.approx(2e-5)


def test_recipe_defaults():
    short = recipe_config("short", 0.4, 70)
    assert (short.start, short.warmup, short.lr_milestones) == (1, 20, (50, 60))  # Shi et al.'s MNIST run
    assert short.init == "ibp" and short.regularize and short.lr == 5e-4 and short.grad_clip == 10
    assert (short.reg_lambda, short.tau) == (0.5, 0.5)
    vanilla = recipe_config("vanilla", 0.4, 70)
    assert vanilla.init == "default" and not vanilla.regularize and vanilla.warmup == 35
    assert recipe_config("short", 0.1, 30, warmup=5, lr_milestones=(20,)).warmup == 5
    assert recipe_config("short", 0.1, 1).warmup == 0
