"""Differentiable explanation maps for training, taken from the forward pass the loss already runs.

captum (core.attribution) makes every map a user sees or a metric reads; it runs its
own forward and returns detached maps. Training needs the student's map WITH a graph
(the explanation loss is backpropagated through it) and must not pay a second forward
for it, so this module reads the last-stage activation through a forward hook during
the ordinary forward and differentiates the logits already computed. The tests pin
each map here to captum's on the same model and layer.

Channel reduction (the same as core.attribution, so training and evaluation explain
alike): `input_gradient` = sum over input channels of |dY_t/dx| (captum Saliency with
abs=True, then summed); `input_x_gradient` = sum over input channels of x * dY_t/dx,
signed (captum InputXGradient, then summed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.attribution import resize_to_larger

EXPLAINERS = ("gradcam", "input_gradient", "input_x_gradient")


class FeatureTap:
    """Keeps the output of one module from the latest forward pass (a forward hook).

    The model stays an unmodified torchvision/CIFAR module; the activation keeps its
    graph, so Grad-CAM can differentiate the logits with respect to it afterwards.
    """

    def __init__(self, layer: nn.Module) -> None:
        self.activation: torch.Tensor | None = None
        self._handle = layer.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        self.activation = output

    def take(self) -> torch.Tensor:
        """The activation of the latest forward; taking it drops the tap's reference (no graph kept alive)."""
        if self.activation is None:
            raise RuntimeError("the tapped layer has not run since the last take()")
        activation, self.activation = self.activation, None
        return activation

    def remove(self) -> None:
        self._handle.remove()
        self.activation = None


def _target_score(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sum_i logits[i, target[i]]: samples do not interact in eval mode, so one backward serves the batch."""
    return logits.gather(1, target.view(-1, 1)).sum()


def gradcam_maps(
    logits: torch.Tensor, activations: torch.Tensor, target: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., 2017): relu(sum_k alpha_k A_k), alpha_k = mean_hw dY_t/dA_k.

    `activations` (N, K, h, w) must be the tapped output the `logits` were computed from.
    Returns (N, 1, h, w) at the layer's resolution (no upsampling). With `create_graph`
    the map is differentiable in the model's parameters (for the student's loss).
    """
    (grads,) = torch.autograd.grad(
        _target_score(logits, target), activations, create_graph=create_graph, retain_graph=True
    )
    # float32 whatever the autocast precision: maps are cached and compared, so they keep full precision
    alpha = grads.float().mean(dim=(2, 3), keepdim=True)
    return F.relu((alpha * activations.float()).sum(dim=1, keepdim=True))


def input_gradient_maps(
    logits: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """Saliency (Simonyan et al., 2014): sum_c |dY_t/dx_c|, (N, 1, H, W).

    `inputs` must have had requires_grad set before the forward that made `logits`.
    """
    (grads,) = torch.autograd.grad(_target_score(logits, target), inputs, create_graph=create_graph, retain_graph=True)
    return grads.float().abs().sum(dim=1, keepdim=True)


def input_x_gradient_maps(
    logits: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """Input x gradient (Shrikumar et al., 2016): sum_c x_c * dY_t/dx_c, signed, (N, 1, H, W)."""
    (grads,) = torch.autograd.grad(_target_score(logits, target), inputs, create_graph=create_graph, retain_graph=True)
    return (inputs.float() * grads.float()).sum(dim=1, keepdim=True)


def explanation_maps(
    explainer: str,
    logits: torch.Tensor,
    activations: torch.Tensor | None,
    inputs: torch.Tensor | None,
    target: torch.Tensor,
    create_graph: bool = False,
) -> torch.Tensor:
    """One entry point for the three explainers: Grad-CAM reads `activations`, the others `inputs`."""
    if explainer == "gradcam":
        if activations is None:
            raise ValueError("gradcam needs the tapped activations")
        return gradcam_maps(logits, activations, target, create_graph)
    if inputs is None or not inputs.requires_grad:
        raise ValueError(f"{explainer} needs inputs that required grad during the forward")
    if explainer == "input_gradient":
        return input_gradient_maps(logits, inputs, target, create_graph)
    if explainer == "input_x_gradient":
        return input_x_gradient_maps(logits, inputs, target, create_graph)
    raise ValueError(f"unknown explainer '{explainer}'; known: {', '.join(EXPLAINERS)}")


def match_size(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two map (or feature) batches at one spatial size: the smaller is bilinearly resized to the larger.

    The same rule the evaluation's explanation cosine uses, so training optimises what is measured.
    """
    return resize_to_larger(a, b)


def minmax_normalize(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each sample's map scaled to [0, 1]; a constant map becomes all zeros (no NaN, still differentiable)."""
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low + eps)).view_as(maps)
