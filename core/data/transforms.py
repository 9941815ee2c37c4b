"""Pixel transforms: the evaluation view of a photo, and training augmentation.

Evaluation (every path): resize the shorter side to `image_size`, then center-crop a
square, so non-square photos keep their aspect ratio. Augmentation of decoded batches
is a named recipe (core.data.recipes); the streamed path (image cache off) applies
torchvision's RandomResizedCrop + horizontal flip per photo for any recipe but `none`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


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
    """Random 4-pixel-padded crop and horizontal flip, per sample, on a normalised batch (the crop-flip recipe)."""
    from core.data.recipes import crop_flip

    return crop_flip(x, generator)
