"""Image sets and how their batches reach the device.

Three kinds, one interface (`__len__`, `labels`, `take`, `batches`):

- `MemoryImages`: uint8 pixels in memory (4x smaller than float32), normalised per
  batch on the device. The default below the memory budget.
- `TensorImages`: already normalised float tensors (hosts and tests that build data
  by hand).
- `StoreImages` (core.data.stored): an image folder decoded once into a store on disk,
  held in RAM below the budget or read batch by batch above it.
- `StreamImages` (core.data.stream): files decoded on the fly by a DataLoader with
  worker processes, when the image cache is off.

Every batch carries the samples' stable indices (positions in the set), which the
teacher-map cache keys on. Batches move to the device one at a time, from pinned
memory on CUDA.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (x on device, y on device, index on the CPU)


class ImageSet(Protocol):
    labels: torch.Tensor  # (N,) int64 on the CPU

    def __len__(self) -> int: ...

    def take(self, index: torch.Tensor | slice) -> torch.Tensor:
        """Normalised float images (CPU) of the samples at `index`, as the model sees them in evaluation."""

    def batches(
        self, order: torch.Tensor, batch_size: int, device: torch.device, augment: bool | str,
        generator: torch.Generator,
    ) -> Iterator[Batch]:
        """One epoch: batches of `order`'s samples in that order, on `device`."""


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy to the device; from pinned memory and without blocking on CUDA."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def normalise(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (or [0, 1] float) pixels -> (x/255 - mean) / std, float32, on the pixels' device.

    uint8 takes one float copy and two in-place passes, x * (1 / (255 std)) + (-mean / std): on
    photo batches the three allocating passes of the plain formula cost more than reading the pixels.
    """
    if pixels.dtype == torch.uint8:
        scale, shift = _uint8_affine(tuple(mean), tuple(std), pixels.device)
        return pixels.float().mul_(scale).add_(shift)
    x = pixels.float()
    mean_t, std_t = _channel_stats(tuple(mean), tuple(std), x.device)
    return (x - mean_t) / std_t


@functools.lru_cache(maxsize=16)
def _uint8_affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """(scale, shift) as (1, C, 1, 1) float32 tensors on `device`: uint8 pixels * scale + shift is normalised."""
    mean64, std64 = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    shape = (1, -1, 1, 1)
    return ((1.0 / (255.0 * std64)).float().view(shape).to(device), (-mean64 / std64).float().view(shape).to(device))


@functools.lru_cache(maxsize=16)
def _channel_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """The per-channel mean and std as (1, C, 1, 1) float32 tensors on `device`, made once per set and device.

    Built per batch, each would be a small host-to-device copy that waits for the GPU on CUDA.
    """
    shape = (1, -1, 1, 1)
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(shape),
            torch.tensor(std, dtype=torch.float32, device=device).view(shape))


class MemoryImages:
    """uint8 pixels `(N, C, H, W)` held in memory; normalised batch by batch on the device."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float]):
        if pixels.dtype != torch.uint8:
            raise TypeError("MemoryImages holds uint8 pixels")
        self.pixels, self.labels = pixels, labels.long()
        self.mean, self.std = list(mean), list(std)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return self.pixels.numel()

    def take(self, index: torch.Tensor | slice) -> torch.Tensor:
        return normalise(self.pixels[index], self.mean, self.std)

    def batches(
        self, order: torch.Tensor, batch_size: int, device: torch.device, augment: bool | str,
        generator: torch.Generator,
    ) -> Iterator[Batch]:
        def read(index: torch.Tensor) -> torch.Tensor:
            return normalise(to_device(self.pixels[index], device), self.mean, self.std)

        return batches_of(order, batch_size, device, augment, generator, read, self.labels)


class TensorImages:
    """Already normalised float images; the set a caller builds from tensors."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        self.x, self.labels = x, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: torch.Tensor | slice) -> torch.Tensor:
        return self.x[index]

    def batches(
        self, order: torch.Tensor, batch_size: int, device: torch.device, augment: bool | str,
        generator: torch.Generator,
    ) -> Iterator[Batch]:
        return batches_of(order, batch_size, device, augment, generator, lambda index: to_device(self.x[index], device),
                          self.labels)


def batches_of(
    order: torch.Tensor, batch_size: int, device: torch.device, augment: bool | str, generator: torch.Generator,
    read: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor,
) -> Iterator[Batch]:
    """The one batch loop of every placement (RAM, disk, tensors): `read(index)` gives a batch's normalised
    images on `device`; the augmentation recipe runs there, with the epoch's generator, so a set yields the
    same batches wherever it is held."""
    from core.data.recipes import apply_recipe

    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        x = read(index)
        if augment:
            x = apply_recipe(x, augment, generator)
        yield x, to_device(labels[index], device), index
