"""The settings of the sampling and masking explainers, set once per job and read by every map it makes.

Smooth Grad-CAM++ averages `samples` noisy copies of the input (noise std `noise`), SS-CAM
`samples` noisy copies of its masks, IS-CAM `samples` scaled copies; the score-based methods
run their masked forwards `batch` images at a time (the memory bound). A job's maps are made in
training, in the evaluation, in the heatmaps and by the autoencoder fit, through callers that
name an explainer and nothing else; the job's settings reach all of them through one context
variable that `core.run` sets from the spec (`use_settings`), instead of through every signature.
A process that never sets them (a bare `captum_maps` call) gets the defaults.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ExplainerSettings:
    """`samples`/`noise` None: the method's own default (torchcam's: 4 / 0.3 Smooth Grad-CAM++, 35 / 2.0 SS-CAM,
    10 IS-CAM). `seed` seeds the noise of every map, so a rerun draws the same noise."""

    samples: int | None = None
    noise: float | None = None
    batch: int = 32
    seed: int = 0

    def samples_or(self, default: int) -> int:
        return self.samples if self.samples is not None else default

    def noise_or(self, default: float) -> float:
        return self.noise if self.noise is not None else default

    def generator(self, device: torch.device) -> torch.Generator:
        """A fresh generator seeded with `seed`: the same noise for the same map call, run after run."""
        return torch.Generator(device=device).manual_seed(self.seed)


_SETTINGS: ContextVar[ExplainerSettings] = ContextVar("explainer_settings", default=ExplainerSettings())


def current_settings() -> ExplainerSettings:
    return _SETTINGS.get()


def use_settings(settings: ExplainerSettings) -> None:
    """Make `settings` the ones every map of this context uses from now on (a job sets its own at its start)."""
    _SETTINGS.set(settings)


@contextmanager
def explainer_settings(settings: ExplainerSettings) -> Iterator[None]:
    """`settings` for the maps made inside the block, the previous ones restored after (library use, tests)."""
    token = _SETTINGS.set(settings)
    try:
        yield
    finally:
        _SETTINGS.reset(token)
