"""Input gradient, or saliency (Simonyan et al., "Deep Inside Convolutional Networks: Visualising Image
Classification Models and Saliency Maps", ICLR workshop 2014): sum_c |dY_t/dx_c|.

The absolute gradient is summed over the input channels, in both forms, so training and the
evaluation explain alike; the map has the input's resolution.

`InputGradient` is also the base of the other input-gradient explainers (input x gradient): they
differ only in how the gradient is combined with the input (`combine`) and in the captum method
that is their reference (`captum_attribution`), so the gradient and the channel sum live here once.

Selected by `{"loss": {"explanation": {"explainer": "input_gradient"}}}`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from core.explain.base import Explainer, ForwardPass, target_score
from core.explain.registry import register


@register
class InputGradient(Explainer):
    """Saliency: the absolute input gradient of the target logit, summed over the input channels."""

    name: ClassVar[str] = "input_gradient"
    label: ClassVar[str] = "input gradient"
    reference: ClassVar[str] = "captum Saliency (abs), summed over channels"
    needs_input_grad: ClassVar[bool] = True

    @staticmethod
    def combine(inputs: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """|dY_t/dx| per channel: saliency keeps the gradient's size and drops its sign."""
        return grads.abs()

    @staticmethod
    def captum_attribution(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """captum Saliency(abs=True), |dY_t/dx| per channel."""
        from captum.attr import Saliency

        return Saliency(model).attribute(inputs, target=target, abs=True)

    @classmethod
    def input_maps(
        cls, logits: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor, create_graph: bool = False
    ) -> torch.Tensor:
        """`combine` of the input and dY_t/dx, summed over channels, (N, 1, H, W).

        `inputs` must have had requires_grad set before the forward; the gradient is float32
        whatever the autocast precision, as maps are cached and compared at full precision.
        """
        (grads,) = torch.autograd.grad(
            target_score(logits, target), inputs, create_graph=create_graph, retain_graph=True
        )
        return cls.combine(inputs, grads.float()).sum(dim=1, keepdim=True)

    def maps(self, forward: ForwardPass, target: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        return self.input_maps(forward.logits, forward.inputs, target, create_graph)

    def attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The captum reference (`captum_attribution`), summed over the input channels like the training form."""
        return self.captum_attribution(model, inputs, target).sum(dim=1, keepdim=True)


def input_gradient_maps(
    logits: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """sum_c |dY_t/dx_c|, (N, 1, H, W); `inputs` must have had requires_grad set before the forward."""
    return InputGradient.input_maps(logits, inputs, target, create_graph)
