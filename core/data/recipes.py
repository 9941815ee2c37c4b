"""Augmentation recipes: one named recipe per spec, applied the same way wherever the pixels live.

`dataset.augment` names the recipe: `none`; `crop-flip` (a 4-pixel reflect-padded random
crop + horizontal flip, the CIFAR recipe for small images); `random-resized-crop`
(RandomResizedCrop's box sampling, scale 0.08-1 and ratio 3/4-4/3, + horizontal flip,
the ImageNet recipe for photos). `true` means the default for the image size (crop-flip
up to 64 px, random-resized-crop above), `false` means none. The recipe runs on the
normalised batch on its device, with the epoch's CPU generator drawing every random
number, so a set held in RAM and the same set read from disk train bit-identically.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

RECIPES = ("none", "crop-flip", "random-resized-crop")
SMALL_IMAGE_MAX = 64  # `augment: true` means crop-flip up to this side, random-resized-crop above


def resolve_recipe(augment: bool | str, image_size: int) -> str:
    """The recipe a spec's `dataset.augment` names (booleans keep their old meaning for the image size)."""
    if augment is False or augment == "none":
        return "none"
    if augment is True:
        return "crop-flip" if image_size <= SMALL_IMAGE_MAX else "random-resized-crop"
    if augment not in RECIPES:
        raise ValueError(f"unknown augmentation recipe {augment!r}; known: {', '.join(RECIPES)}")
    return str(augment)


def apply_recipe(x: torch.Tensor, augment: bool | str, generator: torch.Generator) -> torch.Tensor:
    """`x` (N, C, H, W) normalised on its device, augmented by the recipe `augment` names."""
    recipe = resolve_recipe(augment, int(x.shape[-1]))
    if recipe == "crop-flip":
        return crop_flip(x, generator)
    if recipe == "random-resized-crop":
        return random_resized_crop(x, generator)
    return x


def crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crop and horizontal flip, per sample, on a normalised batch."""
    n, _, h, w = x.shape
    pad = 4
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def crop_boxes(n: int, height: int, width: int, generator: torch.Generator, tries: int = 10) -> torch.Tensor:
    """(n, 4) float boxes x0, y0, x1, y1: torchvision RandomResizedCrop's sampling, vectorised.

    Up to `tries` (area, ratio) draws per sample; the first that fits wins, else the whole image.
    """
    area = height * width
    scale = torch.empty(n, tries).uniform_(0.08, 1.0, generator=generator) * area
    log_ratio = torch.empty(n, tries).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
    ratio = log_ratio.exp()
    w = (scale * ratio).sqrt().round()
    h = (scale / ratio).sqrt().round()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(fits.any(1), fits.int().argmax(1), torch.full((n,), -1))
    pick = first.clamp_min(0).unsqueeze(1)
    w = torch.where(first >= 0, w.gather(1, pick).squeeze(1), torch.full((n,), float(width)))
    h = torch.where(first >= 0, h.gather(1, pick).squeeze(1), torch.full((n,), float(height)))
    u = torch.rand(n, 2, generator=generator)
    x0 = (u[:, 0] * (width - w + 1)).floor()
    y0 = (u[:, 1] * (height - h + 1)).floor()
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def random_resized_crop(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop + horizontal flip of a whole batch in one `roi_align` call on its device.

    roi_align's adaptive sampling averages several bilinear samples per output pixel when
    the box is larger than the output, so a shrinking crop is antialiased.
    """
    from torchvision.ops import roi_align

    n, _, h, w = x.shape
    boxes = crop_boxes(n, h, w, generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rois = torch.cat([torch.arange(n, dtype=torch.float32).unsqueeze(1), boxes], dim=1).to(x.device, x.dtype)
    out = roi_align(x, rois, output_size=(h, w), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    flip = flip.to(x.device).view(n, 1, 1, 1)
    return torch.where(flip, out.flip(-1), out)
