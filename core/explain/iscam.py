"""IS-CAM (Naidu et al., "IS-CAM: Integrated Score-CAM for axiomatic-based explanations", 2020):
Score-CAM with each mask's gain averaged over `samples` scaled copies of the masked input.

As torchcam's ISCAM, the s-th copy (s = 1..n) is scaled by the running sum of i/n for i <= s
(so the scale grows past 1), as torchcam 0.5.0 computes it;
the maps are identical to torchcam's. The student is explained by Grad-CAM.

Selected by `{"loss": {"explanation": {"explainer": "iscam", "samples": 10, "batch": 32}}}`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from core.explain.base import ForwardPass
from core.explain.cam import ScoreCamExplainer
from core.explain.registry import register
from core.explain.settings import current_settings


@register
class IsCam(ScoreCamExplainer):
    """IS-CAM on the explained layer: Score-CAM gains integrated over growing mask scales."""

    name: ClassVar[str] = "iscam"
    label: ClassVar[str] = "IS-CAM"
    default_samples: ClassVar[int] = 10  # torchcam's default

    def score_gains(self, forward: ForwardPass, masks: torch.Tensor, target: torch.Tensor,
                    baseline: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        samples = current_settings().samples_or(self.default_samples)
        total = torch.zeros(masks.shape[:2], device=masks.device)
        scale = 0.0
        for step in range(1, samples + 1):
            scale += step / samples
            total = total + score(scale * masks)
        return total / samples
