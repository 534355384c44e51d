"""Learning-rate schedules: every package's warm-up and decay, written once.

Each schedule is a multiplier of the optimiser's base learning rates, a function of the optimiser
step (what `torch.optim.lr_scheduler.LambdaLR` calls), built by one of the factories below from the
numbers its paper gives. `step_schedule` wraps one or several optimisers in the dictionary Lightning's
`configure_optimizers` returns, stepped every optimiser step.

The formulas are the ones the packages used before this module existed, to the bit; the warm-up
conventions differ between papers on purpose (MAE / VALOR / mmdet count from the first step as
``(step + 1) / warmup``, SOHO's mmcv warm-up starts at ``warmup_start``), so each is a parameter, not
a guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = [
    "Schedule",
    "epoch_step_decay",
    "linear_warmup_then_milestones",
    "step_schedule",
    "warmup_cosine",
    "warmup_linear_decay",
]

Schedule = Callable[[int], float]
"""A learning-rate multiplier as a function of the optimiser step."""


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> Schedule:
    """Linear warm-up ``(step + 1) / warmup_steps``, then a half cosine from 1 to ``min_ratio`` at ``total_steps``.

    MAE's ``adjust_learning_rate`` (CMAE), VALOR's schedule (VLAB) and the detector's cosine are this
    schedule; past ``total_steps`` the multiplier stays at ``min_ratio``.
    """

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return multiplier


def warmup_linear_decay(total_steps: int, warmup_steps: int) -> Schedule:
    """DeepSpeed's ``WarmupDecayLR`` (PixelLM / LISA): linear up to 1 over ``warmup_steps``, then linear to 0."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return multiplier


def epoch_step_decay(
    steps_per_epoch: int, warmup_epochs: int, decay_epochs: Sequence[int], decay_factor: float
) -> Schedule:
    """MCAN's schedule, by epoch: ``(e + 1) / (warmup_epochs + 1)`` of the base rate in the first
    ``warmup_epochs`` epochs, then ``decay_factor`` once for every milestone in ``decay_epochs`` passed."""

    def multiplier(step: int) -> float:
        epoch = step // max(1, steps_per_epoch)
        if epoch < warmup_epochs:
            return (epoch + 1) / (warmup_epochs + 1)
        return decay_factor ** sum(epoch >= e for e in decay_epochs)

    return multiplier


def linear_warmup_then_milestones(
    warmup_steps: int, warmup_start: float, gamma: float, milestones: Sequence[int], epoch: Callable[[], int]
) -> Schedule:
    """mmcv's linear warm-up (from ``warmup_start`` of the rate to all of it over ``warmup_steps``) times
    ``gamma`` for every epoch milestone passed (SOHO / Pixel-BERT's step policy).

    ``epoch`` returns the trainer's current epoch: the milestones count epochs, not steps.
    """
    milestones = sorted(milestones)

    def multiplier(step: int) -> float:
        warm = 1.0 if step >= warmup_steps else warmup_start + (1 - warmup_start) * step / max(warmup_steps, 1)
        return warm * gamma ** sum(epoch() >= m for m in milestones)

    return multiplier


def step_schedule(
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer], schedule: Schedule
) -> dict[str, Any] | tuple[list[torch.optim.Optimizer], list[torch.optim.lr_scheduler.LambdaLR]]:
    """What `configure_optimizers` returns: one optimiser with ``schedule`` stepped by Lightning every
    optimiser step, or, for several optimisers (manual optimisation, which steps its schedulers itself
    after each optimiser step), the optimisers and one ``LambdaLR`` each."""
    if isinstance(optimizer, torch.optim.Optimizer):
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
    optimizers = list(optimizer)
    return optimizers, [torch.optim.lr_scheduler.LambdaLR(opt, schedule) for opt in optimizers]
