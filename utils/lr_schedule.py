"""Learning-rate schedules: the factor of ``cfg.lr`` at each (0-based) training step.

:data:`SCHEDULES` maps ``cfg.scheduler`` (any case) to a builder ``(cfg, steps_per_epoch) -> schedule``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from utils.registry import Registry

Schedule = Callable[[int], float]
# name -> builder(cfg, steps_per_epoch) -> schedule; methods pick theirs with cfg.scheduler
SCHEDULES: Registry[Callable[[Any, int], Schedule]] = Registry("scheduler")


def lr_factor(step: int, steps_per_epoch: int, shrink_epoch: list[int], warmup_epoch: float = 0) -> float:
    """Multiplier of the base LR for the (0-based) ``step``.

    As the reference: ``0.1 ** len([m for m in shrink_epoch if m - 1 <= epoch])`` with the
    0-based epoch of the step, i.e. the LR drops when epoch index ``m - 1`` starts. With
    ``warmup_epoch`` > 0 the factor also ramps linearly from 1/warmup_steps to 1.
    """
    epoch = step // steps_per_epoch
    factor = 0.1 ** sum(1 for m in shrink_epoch if m - 1 <= epoch)
    warmup_steps = int(warmup_epoch * steps_per_epoch)
    if step < warmup_steps:
        factor *= (step + 1) / warmup_steps
    return factor


@SCHEDULES.register("step")
def _step_schedule(cfg: Any, steps_per_epoch: int) -> Schedule:
    return lambda step: lr_factor(step, steps_per_epoch, cfg.shrink_epoch, cfg.warmup_epoch)


def cosine_factor(step: int, total_steps: int) -> float:
    """FaceCL's ``cos``: CosineAnnealingLR(T_max=total_steps, eta_min=0) stepped once per step, no warm-up."""
    return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def poly_factor(step: int, total_steps: int, warmup_steps: int, power: float = 2.0) -> float:
    """FaceCL's ``poly`` (PolyScheduler): linear warm-up from 0, then (1 - progress) ** power.

    As FaceCL computes it for the step's LR: ``step / warmup_steps`` during the warm-up (so the
    first step has LR 0), then ``(1 - (step - warmup) / (total - warmup)) ** 2``. FaceCL's class
    no longer constructs on current torch (it passes the removed ``verbose`` argument); this is
    its formula as a plain function.
    """
    if step < warmup_steps:
        return step / warmup_steps
    return (1.0 - (step - warmup_steps) / (total_steps - warmup_steps)) ** power


@SCHEDULES.register("cos")  # FaceCL / UniMoCo
def _cos_schedule(cfg: Any, steps_per_epoch: int) -> Schedule:
    total = steps_per_epoch * cfg.num_epoch
    return lambda step: cosine_factor(step, total)


@SCHEDULES.register("poly")  # FaceCL / UniMoCo
def _poly_schedule(cfg: Any, steps_per_epoch: int) -> Schedule:
    total, warmup = steps_per_epoch * cfg.num_epoch, int(steps_per_epoch * cfg.warmup_epoch)
    if warmup >= total:
        raise ValueError(
            f"warmup_epoch {cfg.warmup_epoch} leaves no step after the warm-up (num_epoch {cfg.num_epoch})"
        )
    return lambda step: poly_factor(step, total, warmup)


def build_lr_schedule(cfg: Any, steps_per_epoch: int) -> Schedule:
    """The LR factor as a function of the step, for ``cfg.scheduler`` (default "step")."""
    return SCHEDULES.get(cfg.get("scheduler", "step"))(cfg, steps_per_epoch)
