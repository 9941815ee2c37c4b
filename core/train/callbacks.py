"""How a run talks to whoever hosts it (terminal, Celery worker, test).

The engine calls these between steps only, so a host can persist progress and
request cancellation without the engine knowing about SQL or Celery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

# Stages in the order a run goes through them (DESIGN.md job states).
STAGES = ("preparing_data", "training_teacher", "fitting_explainer", "distilling", "evaluating", "rendering")


@dataclass
class Progress:
    """One progress report; `fraction` is the whole run's completion in [0, 1]."""

    stage: str
    epoch: int  # 1-based epoch within the stage (0 before the first epoch ends)
    total_epochs: int
    step: int  # 1-based step within the epoch
    total_steps: int
    fraction: float
    metrics: dict[str, float] = field(default_factory=dict)


class RunCallbacks(Protocol):
    def on_stage(self, stage: str) -> None:
        """A new stage begins (one of STAGES)."""

    def on_progress(self, progress: Progress) -> None:
        """Called after every step and at every epoch end; hosts throttle their own writes."""

    def should_cancel(self) -> bool:
        """Polled between steps; True makes the engine raise core.errors.JobCancelled."""


class NullCallbacks:
    """Callbacks that ignore everything: the default for library use."""

    def on_stage(self, stage: str) -> None:
        pass

    def on_progress(self, progress: Progress) -> None:
        pass

    def should_cancel(self) -> bool:
        return False
