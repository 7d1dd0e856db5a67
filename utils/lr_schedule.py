"""Learning-rate schedules: the factor of ``cfg.lr`` at each (0-based) training step."""

from __future__ import annotations

from typing import Any, Callable

Schedule = Callable[[int], float]


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


def _step_schedule(cfg: Any, steps_per_epoch: int) -> Schedule:
    return lambda step: lr_factor(step, steps_per_epoch, cfg.shrink_epoch, cfg.warmup_epoch)


# name -> builder(cfg, steps_per_epoch) -> schedule; methods pick theirs with cfg.scheduler
SCHEDULES: dict[str, Callable[[Any, int], Schedule]] = {"step": _step_schedule}


def build_lr_schedule(cfg: Any, steps_per_epoch: int) -> Schedule:
    """The LR factor as a function of the step, for ``cfg.scheduler`` (default "step")."""
    name = cfg.get("scheduler", "step")
    if name not in SCHEDULES:
        raise ValueError(f"unknown scheduler {name!r} (known: {', '.join(SCHEDULES)})")
    return SCHEDULES[name](cfg, steps_per_epoch)
