"""The learning-rate schedule of a stage: the spec speaks in epochs, the loop steps once per batch.

Every schedule is one of torch.optim.lr_scheduler's, with its epoch settings turned into
steps (`steps_per_epoch` batches an epoch), so a spec's rates are exactly the ones torch
gives for the same settings and a checkpoint holds the scheduler's own state_dict. A
linear warm-up is torch's LinearLR chained with the schedule (ChainedScheduler): it
multiplies the schedule's rate, and milestones and the cosine count from the first step,
as in the published recipes (warm-up for 5 epochs, x0.1 at epochs 30/60/80).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch.optim.lr_scheduler import (
    ChainedScheduler, CosineAnnealingLR, LinearLR, LRScheduler, MultiStepLR, StepLR,
)


class ScheduleSettings(Protocol):
    """The settings a schedule reads (OptimConfig carries them)."""

    epochs: int
    scheduler: str
    milestones: tuple[int, ...]
    step_size: int | None
    gamma: float
    warmup_epochs: int


def warmup_start_factor(warmup_steps: int) -> float:
    """The first warm-up step runs at lr/(n+1), so the rate reaches lr exactly after the n warm-up steps."""
    return 1.0 / (warmup_steps + 1)


def _main_schedule(optimizer: torch.optim.Optimizer, settings: ScheduleSettings, steps: int) -> LRScheduler | None:
    if settings.scheduler == "cosine":
        return CosineAnnealingLR(optimizer, T_max=max(1, settings.epochs * steps))
    if settings.scheduler == "multistep":
        return MultiStepLR(optimizer, milestones=[epoch * steps for epoch in settings.milestones], gamma=settings.gamma)
    if settings.scheduler == "step":
        if settings.step_size is None:
            raise ValueError("the 'step' scheduler needs step_size")
        return StepLR(optimizer, step_size=settings.step_size * steps, gamma=settings.gamma)
    if settings.scheduler == "none":
        return None
    raise ValueError(f"unknown scheduler '{settings.scheduler}'")


def make_scheduler(
    optimizer: torch.optim.Optimizer, settings: ScheduleSettings, steps_per_epoch: int
) -> LRScheduler | None:
    """The stage's scheduler (stepped after every optimiser step), or None when the rate stays constant.

    Without warm-up this is exactly the scheduler the stage used before warm-up existed (cosine: one
    CosineAnnealingLR), so its checkpoints keep their shape.
    """
    steps = max(1, steps_per_epoch)
    warmup_steps = settings.warmup_epochs * steps
    warmup = None
    if warmup_steps > 0:  # built first: it sets the optimizer's initial_lr, which the schedule reads as base lr
        warmup = LinearLR(optimizer, start_factor=warmup_start_factor(warmup_steps), end_factor=1.0,
                          total_iters=warmup_steps)
    main = _main_schedule(optimizer, settings, steps)
    if warmup is None:
        return main
    if main is None:
        return warmup
    return ChainedScheduler([warmup, main], optimizer=optimizer)


__all__ = ["ScheduleSettings", "make_scheduler", "warmup_start_factor"]
