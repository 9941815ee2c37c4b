"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017): relu(sum_k alpha_k A_k) with alpha_k = mean_hw dY_t/dA_k.

A_k are the channels of the explained layer's output (`core.models.explained_layer`, settable
with `<role>.layer`), so the map has that layer's resolution. Every model here has an explained
layer, which makes Grad-CAM the common explainer every job's metrics also report.

Selected by `{"loss": {"explanation": {"explainer": "gradcam"}}}` (the default; presets e2kd,
xai-mse, xdistill).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from core.explain.base import Explainer, ForwardPass, target_score
from core.explain.registry import register
from core.models import explained_layer


def gradcam_maps(
    logits: torch.Tensor, activations: torch.Tensor, target: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """Grad-CAM of the forward that made `logits` from the tapped `activations` (N, K, h, w).

    Returns (N, 1, h, w) at the layer's resolution (no upsampling). With `create_graph` the
    map is differentiable in the model's parameters (for the student's loss); alpha_k then
    depends on the classifier weights through the graph of the gradient itself.
    """
    (grads,) = torch.autograd.grad(
        target_score(logits, target), activations, create_graph=create_graph, retain_graph=True
    )
    # float32 whatever the autocast precision: maps are cached and compared, so they keep full precision
    alpha = grads.float().mean(dim=(2, 3), keepdim=True)
    return F.relu((alpha * activations.float()).sum(dim=1, keepdim=True))


@register
class GradCam(Explainer):
    """Grad-CAM on the explained layer: relu(sum_k mean_hw(dY_t/dA_k) A_k), at the layer's resolution."""

    name: ClassVar[str] = "gradcam"
    label: ClassVar[str] = "Grad-CAM"
    reference: ClassVar[str] = "captum LayerGradCam"
    needs_layer: ClassVar[bool] = True

    def maps(self, forward: ForwardPass, target: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        assert forward.activations is not None
        return gradcam_maps(forward.logits, forward.activations, target, create_graph)

    def attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """captum LayerGradCam on the explained layer, relu'd, at the layer's resolution (not upsampled)."""
        from captum.attr import LayerGradCam

        return LayerGradCam(model, explained_layer(model)).attribute(inputs, target=target, relu_attributions=True)
