"""Pixel transforms: the evaluation view of a photo, and training augmentation.

Evaluation (both paths): resize the shorter side to `image_size`, then center-crop a
square, so non-square photos keep their aspect ratio. Augmentation: on the in-memory
path a 4-pixel padded random crop + horizontal flip on the normalised batch (the
CIFAR recipe, cheap on small images); on the streamed path torchvision's
RandomResizedCrop + horizontal flip per photo (the ImageNet recipe).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def fit_square(image, image_size: int):  # PIL.Image -> PIL.Image
    """Resize the shorter side to `image_size` (PIL bilinear) and center-crop to a square.

    The same arithmetic as torchvision's `Resize(size)` + `CenterCrop(size)` on a PIL image,
    so the in-memory and streamed paths see identical pixels.
    """
    from PIL import Image

    width, height = image.size
    if (width, height) != (image_size, image_size):
        if width <= height:
            new_size = (image_size, int(image_size * height / width))
        else:
            new_size = (int(image_size * width / height), image_size)
        if new_size != (width, height):
            image = image.resize(new_size, Image.BILINEAR)
        left = int(round((new_size[0] - image_size) / 2.0))
        top = int(round((new_size[1] - image_size) / 2.0))
        image = image.crop((left, top, left + image_size, top + image_size))
    return image


def image_pixels(image, mode: str, image_size: int) -> np.ndarray:
    """(C, S, S) uint8 pixels of a PIL image in `mode` ("L" or "RGB"), fitted to the square."""
    pixels = np.asarray(fit_square(image.convert(mode), image_size), dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def stream_transform(image_size: int, mean: Sequence[float], std: Sequence[float], augment: bool):
    """The torchvision transforms.v2 pipeline of the streamed path: PIL image -> normalised float tensor."""
    from torchvision.transforms import v2

    if augment:
        geometry = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(image_size, interpolation=v2.InterpolationMode.BILINEAR), v2.CenterCrop(image_size)]
    # geometry on the PIL image (PIL's resampling, as the in-memory path), then to a normalised tensor
    return v2.Compose([
        *geometry, v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std)),
    ])


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
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
