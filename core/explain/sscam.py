"""SS-CAM (Wang et al., "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization", 2020):
Score-CAM with each mask's gain averaged over `samples` copies of the masks plus Gaussian noise (std `noise`).

As in torchcam's SSCAM, the noise is added to the normalised, upsampled masks, so all N x K masks
exist at the input's size (Score-CAM's and IS-CAM's are upsampled a batch at a time). It is drawn
from a generator seeded with the job's seed (the same draws as torchcam's from the global
generator seeded alike, which the test uses). The student is explained by Grad-CAM.

Selected by `{"loss": {"explanation": {"explainer": "sscam", "samples": 35, "noise": 2.0, "batch": 32}}}`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from core.explain.base import ForwardPass
from core.explain.cam import ScoreCamExplainer, upsample
from core.explain.registry import register
from core.explain.settings import current_settings


@register
class SsCam(ScoreCamExplainer):
    """SS-CAM on the explained layer: Score-CAM gains averaged over noisy masks."""

    name: ClassVar[str] = "sscam"
    label: ClassVar[str] = "SS-CAM"
    default_samples: ClassVar[int] = 35  # torchcam's defaults
    default_noise: ClassVar[float] = 2.0

    def score_gains(self, forward: ForwardPass, masks: torch.Tensor, target: torch.Tensor,
                    baseline: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        settings = current_settings()
        samples, noise = settings.samples_or(self.default_samples), settings.noise_or(self.default_noise)
        generator = settings.generator(masks.device)
        masks = upsample(masks, tuple(forward.inputs.shape[-2:]))  # the noise is drawn at the input's size
        total = torch.zeros(masks.shape[:2], device=masks.device)
        for _ in range(samples):
            draw = torch.randn(masks.shape, generator=generator, device=masks.device, dtype=masks.dtype)
            total = total + score(masks + noise * draw)
        return total / samples
