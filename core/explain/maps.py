"""What is done to maps once made: one resize rule, min-max scaling and the cosine the metrics report.

Training's explanation loss, AT, FitNet, the evaluation's explanation cosine and the heatmaps
all bring two maps to one size by `resize_to_larger`, so training optimises what is measured.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_to_larger(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring two `(N, C, h, w)` map (or feature) batches to one spatial size: the larger one's (bilinear).

    "Larger" is the map with more pixels; a teacher and a student of different depth give
    Grad-CAM maps of different resolution, and upsampling the coarse one loses nothing of
    the fine one. Maps already of one size come back unchanged (the same tensors).
    """
    size_a, size_b = tuple(a.shape[-2:]), tuple(b.shape[-2:])
    if size_a == size_b:
        return a, b
    if size_a[0] * size_a[1] >= size_b[0] * size_b[1]:
        return a, _resize(b, size_a)
    return _resize(a, size_b), b


def _resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def minmax_normalize(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each sample's map scaled to [0, 1]; a constant map becomes all zeros (no NaN, still differentiable).

    Maps of different explainers and models differ in scale and sign; scaling each to [0, 1]
    lets an MSE (and a person looking at a heatmap) compare where the evidence is, not how much.
    """
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low + eps)).view_as(maps)


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
