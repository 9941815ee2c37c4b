"""Layer-CAM (Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization",
IEEE TIP 2021): relu(sum_k relu(dY_t/dA_k) * A_k), a weight per position instead of per channel.

Differentiable for the student like Grad-CAM (one double backward); identical to torchcam's
LayerCAM on one layer (its tanh scaling applies only when fusing several layers).

Selected by `{"loss": {"explanation": {"explainer": "layercam"}}}`.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from core.explain.base import ForwardPass
from core.explain.cam import CamExplainer, layer_gradients
from core.explain.registry import register


@register
class LayerCam(CamExplainer):
    """Layer-CAM on the explained layer: the positive gradient of each position weights its activation."""

    name: ClassVar[str] = "layercam"
    label: ClassVar[str] = "Layer-CAM"

    def weights(self, forward: ForwardPass, target: torch.Tensor, create_graph: bool) -> torch.Tensor:
        assert forward.activations is not None
        return torch.relu(layer_gradients(forward.logits, forward.activations, target, create_graph))
