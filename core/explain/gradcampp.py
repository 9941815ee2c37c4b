"""Grad-CAM++ (Chattopadhyay et al., "Grad-CAM++: Improved Visual Explanations for Deep Convolutional
Networks", WACV 2018): w_k = sum_hw alpha_khw relu(g_khw), alpha = g^2 / (2 g^2 + sum_hw A_k g^3).

g = dY_t/dA at the explained layer (the exponential-output closed form, as in torchcam). Where
g^2 = 0, alpha is 0. Differentiable for the student like Grad-CAM (one double backward).
torchcam 0.5.0's GradCAMpp skips the division (it divides a masked copy), so its weights are
sum_hw g^2 relu(g); the test pins that and checks this map against torchcam's SmoothGradCAMpp
with one noiseless sample, which divides.

Selected by `{"loss": {"explanation": {"explainer": "gradcampp"}}}`.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from core.explain.base import ForwardPass
from core.explain.cam import CamExplainer, layer_gradients
from core.explain.registry import register


def gradcampp_weights(activations: torch.Tensor, grads: torch.Tensor, grads_2: torch.Tensor,
                      grads_3: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(N, K) weights sum_hw alpha relu(g) from the gradient and its (possibly averaged) squares and cubes."""
    denominator = 2 * grads_2 + (grads_3 * activations.float()).sum(dim=(2, 3), keepdim=True)
    alpha = torch.where(grads_2 > 0, grads_2 / (denominator + eps), torch.zeros_like(grads_2))
    return (alpha * torch.relu(grads)).sum(dim=(2, 3))


@register
class GradCamPlusPlus(CamExplainer):
    """Grad-CAM++ on the explained layer, at the layer's resolution."""

    name: ClassVar[str] = "gradcampp"
    label: ClassVar[str] = "Grad-CAM++"

    def weights(self, forward: ForwardPass, target: torch.Tensor, create_graph: bool) -> torch.Tensor:
        assert forward.activations is not None
        grads = layer_gradients(forward.logits, forward.activations, target, create_graph)
        return gradcampp_weights(forward.activations, grads, grads.pow(2), grads.pow(3))
