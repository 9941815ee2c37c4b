"""Input x gradient (Shrikumar et al., "Not Just a Black Box: Learning Important Features Through
Propagating Activation Differences", 2016): sum_c x_c * dY_t/dx_c, signed.

The product is summed over the input channels, in both forms, so training and the evaluation
explain alike; the map has the input's resolution and keeps its sign (evidence for and against).
It is saliency with another combination of input and gradient, hence a subclass of `InputGradient`.

Selected by `{"loss": {"explanation": {"explainer": "input_x_gradient"}}}`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from core.explain.input_gradient import InputGradient
from core.explain.registry import register


@register
class InputXGradient(InputGradient):
    """The input times its gradient of the target logit, summed over the input channels (signed)."""

    name: ClassVar[str] = "input_x_gradient"
    label: ClassVar[str] = "input x gradient"
    reference: ClassVar[str] = "captum InputXGradient, summed over channels"

    @staticmethod
    def combine(inputs: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """x * dY_t/dx per channel, signed: evidence for and against the class both show."""
        return inputs.float() * grads

    @staticmethod
    def captum_attribution(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """captum InputXGradient, x * dY_t/dx (signed) per channel."""
        from captum.attr import InputXGradient as CaptumInputXGradient

        return CaptumInputXGradient(model).attribute(inputs, target=target)


def input_x_gradient_maps(
    logits: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """sum_c x_c * dY_t/dx_c, signed, (N, 1, H, W); `inputs` must have had requires_grad set before the forward."""
    return InputXGradient.input_maps(logits, inputs, target, create_graph)
