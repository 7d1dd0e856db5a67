"""utils/lr_schedule.py: FaceCL's "cos" and "poly" schedules (the "step" one is tested with train.py)."""

import math

import pytest
import torch
from easydict import EasyDict as edict

from utils.errors import UnknownNameError
from utils.lr_schedule import SCHEDULES, build_lr_schedule, cosine_factor, poly_factor


def test_cos_matches_torch_cosine_annealing_per_step():
    schedule = build_lr_schedule(edict(scheduler="cos", num_epoch=3), steps_per_epoch=4)  # 12 steps
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    torch_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=12)
    for step in range(12):  # FaceCL reads the LR, steps, then calls lr_scheduler.step()
        assert 0.2 * schedule(step) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
        optimizer.step()
        torch_schedule.step()
    assert schedule(0) == 1.0 and schedule(6) == pytest.approx(0.5) and cosine_factor(3, 12) == pytest.approx(
        (1 + math.cos(math.pi / 4)) / 2
    )


def test_poly_warmup_then_power_two():
    schedule = build_lr_schedule(edict(scheduler="poly", num_epoch=5, warmup_epoch=1), steps_per_epoch=2)
    # warm-up over 2 steps: 0, 1/2; then (1 - (s - 2) / 8) ** 2
    assert [schedule(s) for s in range(4)] == [0.0, 0.5, 1.0, pytest.approx(0.765625)]
    assert schedule(9) == pytest.approx((1 - 7 / 8) ** 2)
    assert poly_factor(5, 10, 0) == pytest.approx(0.25)  # no warm-up
    with pytest.raises(ValueError, match="warmup_epoch 5 leaves no step"):
        build_lr_schedule(edict(scheduler="poly", num_epoch=5, warmup_epoch=5), steps_per_epoch=2)


def test_unknown_scheduler_lists_the_known():
    known = r"unknown scheduler 'cosine'; did you mean 'cos'\? \(known: step, cos, poly\)"
    with pytest.raises(UnknownNameError, match=known):
        build_lr_schedule(edict(scheduler="cosine"), 1)
    assert list(SCHEDULES) == ["step", "cos", "poly"]
    assert build_lr_schedule(edict(scheduler="COS", num_epoch=1), 4)(2) == pytest.approx(0.5)  # any case
