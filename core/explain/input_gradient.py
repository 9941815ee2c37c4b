"""Input gradient, or saliency (Simonyan et al., "Deep Inside Convolutional Networks: Visualising Image
Classification Models and Saliency Maps", ICLR workshop 2014): sum_c |dY_t/dx_c|.

The absolute gradient is summed over the input channels, in both forms, so training and the
evaluation explain alike; the map has the input's resolution.

Selected by `{"loss": {"explanation": {"explainer": "input_gradient"}}}`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from core.explain.base import Explainer, ForwardPass, target_score
from core.explain.registry import register


def input_gradient_maps(
    logits: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """sum_c |dY_t/dx_c|, (N, 1, H, W); `inputs` must have had requires_grad set before the forward."""
    (grads,) = torch.autograd.grad(target_score(logits, target), inputs, create_graph=create_graph, retain_graph=True)
    return grads.float().abs().sum(dim=1, keepdim=True)


@register
class InputGradient(Explainer):
    """Saliency: the absolute input gradient of the target logit, summed over the input channels."""

    name: ClassVar[str] = "input_gradient"
    label: ClassVar[str] = "input gradient"
    reference: ClassVar[str] = "captum Saliency (abs), summed over channels"
    needs_input_grad: ClassVar[bool] = True

    def maps(self, forward: ForwardPass, target: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        return input_gradient_maps(forward.logits, forward.inputs, target, create_graph)

    def attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """captum Saliency(abs=True), |dY_t/dx|, summed over the input channels."""
        from captum.attr import Saliency

        return Saliency(model).attribute(inputs, target=target, abs=True).sum(dim=1, keepdim=True)
