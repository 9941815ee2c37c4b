"""Run callbacks for a terminal: a tqdm bar on an interactive stderr, plain log lines otherwise.

A worker has its own callbacks (database progress, cancellation); these only show a person
at a terminal, or a log file, where a run is. Neither ever cancels: Ctrl-C does, and the
last epoch's checkpoint lets the same command resume.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from core.train.callbacks import Progress, RunCallbacks

log = logging.getLogger("core.train.progress")


def _is_epoch_end(progress: Progress) -> bool:
    """The trainer's epoch-end report is the one that carries held-out numbers."""
    return progress.step == progress.total_steps and any(key.startswith("test_") for key in progress.metrics)


def _summary(metrics: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:.4f}" for key, value in metrics.items())


class LogCallbacks:
    """One line per epoch end: readable in a log file, no carriage returns."""

    def on_stage(self, stage: str) -> None:
        pass  # the engine (core.stages) logs every stage start itself

    def on_progress(self, progress: Progress) -> None:
        if _is_epoch_end(progress):
            log.info(
                "%s epoch %d/%d [%3.0f%%] %s",
                progress.stage,
                progress.epoch,
                progress.total_epochs,
                100 * progress.fraction,
                _summary(progress.metrics),
            )

    def should_cancel(self) -> bool:
        return False


class TqdmCallbacks:
    """One progress bar per training stage, counting steps, with epoch, loss and accuracy as postfix."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._bar = None
        self._stage: str | None = None
        self._accuracy: float | None = None

    def on_stage(self, stage: str) -> None:
        self.close()
        self._stage = stage
        self._accuracy = None

    def on_progress(self, progress: Progress) -> None:
        from tqdm import tqdm

        total = progress.total_epochs * progress.total_steps
        if self._bar is None or self._stage != progress.stage:
            self.close()
            self._stage = progress.stage
            self._bar = tqdm(total=total, desc=progress.stage, file=self.stream, dynamic_ncols=True, leave=True)
        # A step report counts within its (1-based) epoch; the stage-start report (step 0) after whole epochs.
        if progress.step == 0:
            done = progress.epoch * progress.total_steps
        else:
            done = (progress.epoch - 1) * progress.total_steps + progress.step
        self._bar.n = min(done, total)
        if _is_epoch_end(progress):
            self._accuracy = progress.metrics.get("test_accuracy", progress.metrics.get("train_accuracy"))
        postfix = {"epoch": f"{progress.epoch}/{progress.total_epochs}"}
        if "loss" in progress.metrics:
            postfix["loss"] = f"{progress.metrics['loss']:.4f}"
        if self._accuracy is not None:
            postfix["test_acc"] = f"{self._accuracy:.3f}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.refresh()

    def should_cancel(self) -> bool:
        return False

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def terminal_callbacks(stream: TextIO | None = None) -> RunCallbacks:
    """A tqdm bar when `stream` (default stderr) is a terminal, log lines otherwise."""
    stream = stream or sys.stderr
    return TqdmCallbacks(stream) if stream.isatty() else LogCallbacks()
