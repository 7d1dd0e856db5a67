"""The learning-rate schedule: step decay at the shrink epochs, optional linear warm-up."""

from __future__ import annotations


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
