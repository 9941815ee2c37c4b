"""Reference explanation maps, computed with captum.

Every map a user sees (heatmaps) and every map an evaluation metric reads comes
from `captum_maps`, so the numbers are those of a well-known library rather
than of our own code. Each explainer's captum call is its `attribute` method
(core.explain.base), next to the hand-written training form it is tested equal
to; this module runs it in batches, in eval mode, on private input copies.
"""

from __future__ import annotations

import torch
from torch import nn

from core.explain.maps import map_cosine
from core.explain.registry import explanation_context, get_explainer

__all__ = ["captum_maps", "map_cosine"]  # map_cosine lives in core.explain.maps; kept importable from here


def captum_maps(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, explainer: str = "gradcam", batch_size: int = 128
) -> torch.Tensor:
    """Explanation maps `(N, 1, h, w)` of `model` for class `target[i]` of each input `x[i]`.

    Each map is the explainer's `attribute` (core.explain.base): a captum method, its channels
    summed so every map has one (the formula, paper and captum call of each explainer are in its
    module, e.g. core.explain.gradcam). Layer methods keep the layer's resolution (not upsampled),
    input methods the input's.

    The model runs in eval mode (its previous mode is restored afterwards) on its own device,
    `batch_size` inputs at a time, with gradients enabled even inside a caller's `no_grad`.
    The maps are detached and returned on `x`'s device. Gradients are taken with
    `torch.autograd.grad`, so no parameter's `.grad` is touched.
    """
    get_explainer(explainer).check(model)  # an unknown name, or a model it cannot explain, fails before any work
    if x.ndim != 4:
        raise ValueError(f"inputs must be (N, C, H, W), got shape {tuple(x.shape)}")
    target = torch.as_tensor(target, dtype=torch.long).reshape(-1)
    if len(target) != len(x):
        raise ValueError(f"{len(target)} targets for {len(x)} inputs")
    if len(x) == 0:
        raise ValueError("no inputs to explain")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            maps = [
                _explain_batch(model, explainer, x[i : i + batch_size], target[i : i + batch_size], device)
                for i in range(0, len(x), batch_size)
            ]
    finally:
        model.train(was_training)
    return torch.cat(maps).to(x.device)


def _explain_batch(
    model: nn.Module, explainer: str, x: torch.Tensor, target: torch.Tensor, device: torch.device
) -> torch.Tensor:
    method = get_explainer(explainer)
    # A private copy that requires grad: captum would otherwise set that flag on the caller's tensor (and warn).
    inputs = x.detach().to(device).clone().requires_grad_(method.needs_input_grad)
    with explanation_context(model, explainer):
        return method.attribute(model, inputs, target.to(device)).detach()
