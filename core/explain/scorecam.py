"""Score-CAM (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
Networks", CVPR workshops 2020): w = softmax_k(Y_t(x * M_k) - Y_t(x)), M_k the k-th channel of the
explained layer min-max normalised and upsampled to the input.

One masked forward per channel and sample, `batch` masked images per forward (the memory bound);
no gradient. Identical to torchcam's ScoreCAM. The student is explained by Grad-CAM (see
core.explain.cam.ScoreCamExplainer and the README).

Selected by `{"loss": {"explanation": {"explainer": "scorecam", "batch": 32}}}`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from core.explain.base import ForwardPass
from core.explain.cam import ScoreCamExplainer
from core.explain.registry import register


@register
class ScoreCam(ScoreCamExplainer):
    """Score-CAM on the explained layer: channels weighted by how much their mask alone keeps of the target logit."""

    name: ClassVar[str] = "scorecam"
    label: ClassVar[str] = "Score-CAM"

    def score_gains(self, forward: ForwardPass, masks: torch.Tensor, target: torch.Tensor,
                    baseline: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return score(masks)
