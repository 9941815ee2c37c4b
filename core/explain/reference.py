"""Reference explanation maps, computed with captum.

Every map a user sees (heatmaps) and every map an evaluation metric reads comes
from `captum_maps`, so the numbers are those of a well-known library rather
than of our own code. Each explainer's captum call is its entry's `captum` form in
core.explain's `EXPLAINERS`, next to the hand-written training form it is tested
equal to; this module runs it in batches, in eval mode, on private input copies.
"""

from __future__ import annotations

import torch
from torch import nn

from core.explain import explanation_context, get_explainer, resize_to_larger


def captum_maps(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, explainer: str = "gradcam", batch_size: int = 128
) -> torch.Tensor:
    """Explanation maps `(N, 1, h, w)` of `model` for class `target[i]` of each input `x[i]`.

    - `gradcam`: captum `LayerGradCam` on `core.models.explained_layer(model)` with
      `relu_attributions=True`, i.e. `relu(sum_k mean_hw(dY_t/dA_k) * A_k)`; the map keeps the
      layer's resolution (not upsampled), so it is non-negative and `(N, 1, h, w)`.
    - `input_gradient`: captum `Saliency(abs=True)`, `|dY_t/dx|`, then SUMMED over the input
      channels -> `(N, 1, H, W)`.
    - `input_x_gradient`: captum `InputXGradient`, `x * dY_t/dx` (signed), then SUMMED over the
      input channels -> `(N, 1, H, W)`.
    - `bcos` (B-cos models only): captum `LayerGradientXActivation` on the model's input encoder,
      `e * dY_t/de` of the encoded input e = [p, 1 - p], with the model in explanation mode (dynamic
      weights detached, so dY_t/de = W(x)), SUMMED over the encoded channels -> `(N, 1, H, W)`: the
      contribution map W(x)·x, whose pixels sum to the logit minus the logit layer's constant bias.

    The model runs in eval mode (its previous mode is restored afterwards) on its own device,
    `batch_size` inputs at a time, with gradients enabled even inside a caller's `no_grad`.
    The maps are detached and returned on `x`'s device. Gradients are taken with
    `torch.autograd.grad`, so no parameter's `.grad` is touched.
    """
    get_explainer(explainer)  # an unknown name fails before any work
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
        return method.captum(model, inputs, target.to(device)).detach()


def map_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample cosine similarity `(N,)` of two map batches, after `resize_to_larger`.

    A sample where either map is all zeros (Grad-CAM of a dead layer, or of a class the
    model does not see anywhere) has no direction: it counts as 0, not as a NaN or an
    arbitrary value, so a student cannot score by explaining nothing.
    """
    a, b = resize_to_larger(a, b)
    a, b = a.flatten(1).double(), b.flatten(1).double()
    norms = a.norm(dim=1) * b.norm(dim=1)
    cosine = (a * b).sum(dim=1) / norms.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(norms > 0, cosine, torch.zeros_like(cosine)).float()
