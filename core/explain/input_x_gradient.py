"""Input x gradient (Shrikumar et al., "Not Just a Black Box: Learning Important Features Through
Propagating Activation Differences", 2016): sum_c x_c * dY_t/dx_c, signed.

The product is summed over the input channels, in both forms, so training and the evaluation
explain alike; the map has the input's resolution and keeps its sign (evidence for and against).

Selected by `{"loss": {"explanation": {"explainer": "input_x_gradient"}}}`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from core.explain.base import Explainer, ForwardPass, target_score
from core.explain.registry import register


def input_x_gradient_maps(
    logits: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """sum_c x_c * dY_t/dx_c, signed, (N, 1, H, W); `inputs` must have had requires_grad set before the forward."""
    (grads,) = torch.autograd.grad(target_score(logits, target), inputs, create_graph=create_graph, retain_graph=True)
    return (inputs.float() * grads.float()).sum(dim=1, keepdim=True)


@register
class InputXGradient(Explainer):
    """The input times its gradient of the target logit, summed over the input channels (signed)."""

    name: ClassVar[str] = "input_x_gradient"
    label: ClassVar[str] = "input x gradient"
    reference: ClassVar[str] = "captum InputXGradient, summed over channels"
    needs_input_grad: ClassVar[bool] = True

    def maps(self, forward: ForwardPass, target: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        return input_x_gradient_maps(forward.logits, forward.inputs, target, create_graph)

    def attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """captum InputXGradient, x * dY_t/dx (signed), summed over the input channels."""
        from captum.attr import InputXGradient as CaptumInputXGradient

        return CaptumInputXGradient(model).attribute(inputs, target=target).sum(dim=1, keepdim=True)
