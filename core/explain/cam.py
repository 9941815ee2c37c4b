"""What every class activation map shares: relu(sum_k w_k A_k) at the explained layer, only the weights differ.

The CAM family (Zhou et al. 2016 and its successors, nine methods in torchcam) reads the output
A (N, K, h, w) of one layer (`core.models.explained_layer`, the one layer rule) and weights its
channels; a method is its weighting alone (`CamExplainer.weights`), in its own module. Here, once:

- `layer_gradients`: dY_t/dA for the gradient methods (with `create_graph`, differentiable in the
  model's parameters: the student's one double backward, as for Grad-CAM);
- `weighted_map`: relu(sum_k w_k A_k), w per channel (N, K) or per position (N, K, h, w); maps stay
  at the layer's resolution (consumers resize with `core.explain.maps.resize_to_larger` and
  min-max scale where they compare);
- `channel_masks` and `masked_scores`: the score methods' masks (each channel min-max normalised,
  upsampled to the input) and the target-logit change of the masked inputs, `batch` at a time;
- `CamExplainer.attribute`: the reference form, the same code on its own forward. torchcam is
  the reference these maps are tested equal to (tests/core/test_cam_torchcam.py).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from core.explain.base import Explainer, FeatureTap, ForwardPass, target_score
from core.explain.settings import current_settings


def layer_gradients(
    logits: torch.Tensor, activations: torch.Tensor, target: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """dY_t/dA (N, K, h, w), float32; differentiable in the parameters with `create_graph`."""
    (grads,) = torch.autograd.grad(
        target_score(logits, target), activations, create_graph=create_graph, retain_graph=True
    )
    return grads.float()


def weighted_map(activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """relu(sum_k w_k A_k), (N, 1, h, w): weights (N, K) per channel or (N, K, h, w) per position."""
    if weights.dim() == 2:
        weights = weights[:, :, None, None]
    return F.relu((weights * activations.float()).sum(dim=1, keepdim=True))


def channel_masks(activations: torch.Tensor) -> torch.Tensor:
    """Each channel of A min-max normalised over its positions, at the layer's resolution: (N, K, h, w).

    Normalising before upsampling is torchcam's order (Score-CAM's own code too); `upsample` brings
    masks to the input's size, chunk by chunk in `masked_scores`, so all K masks at the input's
    resolution never exist at once.
    """
    flat = activations.float().flatten(2)
    low = flat.min(dim=2, keepdim=True).values
    high = flat.max(dim=2, keepdim=True).values
    return ((flat - low) / (high - low + 1e-8)).view_as(activations)


def upsample(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Masks (.., h, w) brought to `size` (bilinear, as torchcam); masks already of that size come back as they are."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks, size=size, mode="bilinear", align_corners=False)


def masked_scores(
    model: nn.Module, inputs: torch.Tensor, masks: torch.Tensor, target: torch.Tensor, baseline: torch.Tensor,
    batch: int,
) -> torch.Tensor:
    """Y_t(x_i * M_ik) - Y_t(x_i) for every sample i and mask k, (N, K), `batch` masked inputs per forward.

    `masks` (N, K, h, w) are upsampled to the input's size a chunk at a time, so memory grows with
    `batch`, not with N * K. Differentiable when grad is enabled and `masks` carry a graph; the
    callers run it under `no_grad` for a constant map (the teacher's, the evaluation's).
    """
    n, k = masks.shape[:2]
    size = tuple(inputs.shape[-2:])
    sample = torch.arange(n, device=masks.device).repeat_interleave(k)
    flat_masks = masks.flatten(0, 1).unsqueeze(1)
    scores = []
    for start in range(0, n * k, batch):
        rows = sample[start : start + batch]
        logits = model(upsample(flat_masks[start : start + batch], size) * inputs[rows])
        scores.append(logits.float().gather(1, target[rows].view(-1, 1)).squeeze(1) - baseline[rows])
    return torch.cat(scores).view(n, k)


class CamExplainer(Explainer):
    """A class activation map at the explained layer: a subclass gives its channel weights, nothing else.

    The reference form (`attribute`) runs the model once with a tap on the layer and applies the
    same weighting, so what users see and what training optimises are one computation.
    """

    needs_layer: ClassVar[bool] = True
    reference: ClassVar[str] = "this service's CAM code, tested equal to torchcam"

    @abstractmethod
    def weights(self, forward: ForwardPass, target: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """The channel weights (N, K) or (N, K, h, w) of `forward.activations` for class `target`."""

    def maps(self, forward: ForwardPass, target: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        assert forward.activations is not None
        return weighted_map(forward.activations, self.weights(forward, target, create_graph))

    def attribute(self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The map on a forward of its own (eval mode, set by the caller), at the layer's resolution, not normalised.

        The inputs (a private copy) require grad, so the layer's output has a graph to differentiate
        even for a frozen model (the job's teacher), as captum's layer methods arrange too.
        """
        forward = tapped_forward(model, inputs.detach().requires_grad_(True), self.layer(model))
        return self.maps(forward, target).detach()


def tapped_forward(model: nn.Module, inputs: torch.Tensor, layer: nn.Module | None) -> ForwardPass:
    """One forward of `model` on `inputs`, keeping `layer`'s output (with its graph) as the activations."""
    tap = FeatureTap(layer) if layer is not None else None
    try:
        logits = model(inputs)
        activations = tap.take() if tap is not None else None
    finally:
        if tap is not None:
            tap.remove()
    return ForwardPass(model, inputs, logits, activations)


class ScoreCamExplainer(CamExplainer):
    """Score-CAM and its variants: weights = softmax_k of the target-logit gain of the input masked by channel k.

    Masked forwards, not gradients: K (the layer's channels) forwards per sample and per sample
    draw, `batch` at a time. They are too costly to differentiate on every student step, so the
    student is explained by `student_explainer` (Grad-CAM, the cheapest CAM of the same layer)
    while the teacher's target maps are these (see README, "The CAM family").
    """

    backward_passes: ClassVar[int] = 0
    student_explainer: ClassVar[str | None] = "gradcam"
    default_samples: ClassVar[int] = 1

    @abstractmethod
    def score_gains(self, forward: ForwardPass, masks: torch.Tensor, target: torch.Tensor,
                    baseline: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The (N, K) mean target-logit gains this variant averages over its draws.

        `masks` (N, K, h, w) are at the layer's resolution; `score(masks)` runs `masked_scores`,
        which upsamples them to the input's size chunk by chunk.
        """

    def weights(self, forward: ForwardPass, target: torch.Tensor, create_graph: bool) -> torch.Tensor:
        assert forward.activations is not None
        settings = current_settings()
        inputs = forward.inputs.detach()
        activations = forward.activations if create_graph else forward.activations.detach()
        with torch.set_grad_enabled(create_graph):
            baseline = forward.logits.float().gather(1, target.view(-1, 1)).squeeze(1)
            if not create_graph:
                baseline = baseline.detach()
            masks = channel_masks(activations)

            def score(batch_masks: torch.Tensor) -> torch.Tensor:
                return masked_scores(forward.model, inputs, batch_masks, target, baseline, settings.batch)

            gains = self.score_gains(forward, masks, target, baseline, score)
        return torch.softmax(gains, dim=1)

    def cost(self, channels: int) -> tuple[int, int]:
        samples = current_settings().samples_or(self.default_samples) if self.default_samples > 1 else 1
        return channels * samples, 0
