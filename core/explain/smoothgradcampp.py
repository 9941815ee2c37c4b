"""Smooth Grad-CAM++ (Omeiza et al., "Smooth Grad-CAM++: An Enhanced Inference Level Visualization
Technique for Deep Convolutional Neural Network Models", 2019): Grad-CAM++ with the gradient, its
square and its cube each averaged over `samples` copies of the input with Gaussian noise (std `noise`).

The map weights the clean input's activations. The noise is drawn from a generator seeded with the
job's seed (`core.explain.settings`), so a rerun repeats it. torchcam's SmoothGradCAMpp draws the
same noise from the global generator but weights the LAST noisy copy's activations with the last
copy's relu(gradient); with noise -> 0 the two agree (tested), and the README states the difference.

For the student it is explained by Grad-CAM++ (its noiseless limit, one double backward): the
`samples` extra forwards and backwards per step are paid on the teacher's side only.

Selected by `{"loss": {"explanation": {"explainer": "smoothgradcampp", "samples": 4, "noise": 0.3}}}`.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from core.explain.base import ForwardPass
from core.explain.cam import CamExplainer, layer_gradients, tapped_forward
from core.explain.gradcampp import gradcampp_weights
from core.explain.registry import register
from core.explain.settings import current_settings

DEFAULT_SAMPLES = 4  # torchcam's defaults
DEFAULT_NOISE = 0.3


@register
class SmoothGradCamPlusPlus(CamExplainer):
    """Grad-CAM++ with noise-averaged gradient moments, on the explained layer."""

    name: ClassVar[str] = "smoothgradcampp"
    label: ClassVar[str] = "Smooth Grad-CAM++"
    student_explainer: ClassVar[str | None] = "gradcampp"

    def cost(self, channels: int) -> tuple[int, int]:
        samples = current_settings().samples_or(DEFAULT_SAMPLES)
        return samples, samples

    def weights(self, forward: ForwardPass, target: torch.Tensor, create_graph: bool) -> torch.Tensor:
        assert forward.activations is not None
        settings = current_settings()
        samples, noise = settings.samples_or(DEFAULT_SAMPLES), settings.noise_or(DEFAULT_NOISE)
        clean = forward.inputs.detach()
        generator = settings.generator(clean.device)
        moments = [torch.zeros_like(forward.activations, dtype=torch.float32) for _ in range(3)]
        layer = self.layer(forward.model)
        for _ in range(samples):
            noisy = (clean + noise * torch.randn(clean.shape, generator=generator, device=clean.device,
                                                 dtype=clean.dtype)).requires_grad_(True)
            with torch.enable_grad():
                sample = tapped_forward(forward.model, noisy, layer)
                assert sample.activations is not None
                grads = layer_gradients(sample.logits, sample.activations, target, create_graph)
            moments = [moment + grads.pow(power) for power, moment in enumerate(moments, start=1)]
        mean_grads, mean_2, mean_3 = (moment / samples for moment in moments)
        return gradcampp_weights(forward.activations, mean_grads, mean_2, mean_3)
