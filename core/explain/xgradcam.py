"""XGrad-CAM (Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs",
BMVC 2020): w_k = sum_hw (A_k dY_t/dA_k) / (sum_hw A_k + eps).

Differentiable for the student like Grad-CAM (one double backward); identical to torchcam's XGradCAM.

Selected by `{"loss": {"explanation": {"explainer": "xgradcam"}}}`.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from core.explain.base import ForwardPass
from core.explain.cam import CamExplainer, layer_gradients
from core.explain.registry import register


@register
class XGradCam(CamExplainer):
    """XGrad-CAM on the explained layer: gradients weighted by the normalised activations."""

    name: ClassVar[str] = "xgradcam"
    label: ClassVar[str] = "XGrad-CAM"

    def weights(self, forward: ForwardPass, target: torch.Tensor, create_graph: bool) -> torch.Tensor:
        assert forward.activations is not None
        activations = forward.activations.float()
        grads = layer_gradients(forward.logits, forward.activations, target, create_graph)
        return (grads * activations).sum(dim=(2, 3)) / (activations.sum(dim=(2, 3)) + 1e-8)
