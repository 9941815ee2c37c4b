"""The streamed path: photos decoded on the fly by a DataLoader with worker processes.

For image folders larger than the memory budget. Each epoch is one DataLoader over
the epoch's order (a fixed sampler), so sample indices stay stable (the teacher-map
cache keys on them) and the seeded generator makes workers' augmentation repeatable.
Only `batch_size x prefetch` decoded images exist at a time: memory stays flat
whatever the set's size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from core.data.images import Batch, to_device
from core.data.transforms import stream_transform


class _Photos(Dataset):
    """(image, label, index) of one file list; picklable, so worker processes can rebuild it."""

    def __init__(self, files: Sequence[Path], labels: torch.Tensor, mode: str, transform) -> None:
        self.files, self.labels, self.mode, self.transform = list(files), labels, mode, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        from PIL import Image

        with Image.open(self.files[index]) as image:
            x = self.transform(image.convert(self.mode))
        return x, self.labels[index], index


def default_workers() -> int:
    """DISTILL_DATA_WORKERS, else up to 4 decoding processes (one core stays for the training loop)."""
    configured = os.environ.get("DISTILL_DATA_WORKERS")
    if configured is not None:
        return max(0, int(configured))
    return max(1, min(4, (os.cpu_count() or 2) - 1))


class StreamImages:
    """An image folder split read from disk per batch (resize + center crop, or RandomResizedCrop + flip)."""

    def __init__(
        self, files: Sequence[Path], labels: torch.Tensor, mode: str, image_size: int,
        mean: Sequence[float], std: Sequence[float], workers: int | None = None,
    ) -> None:
        self.files, self.labels, self.mode, self.image_size = list(files), labels.long(), mode, image_size
        self.mean, self.std = list(mean), list(std)
        self.workers = default_workers() if workers is None else workers

    def __len__(self) -> int:
        return len(self.labels)

    def _dataset(self, augment: bool) -> _Photos:
        return _Photos(self.files, self.labels, self.mode, stream_transform(self.image_size, self.mean, self.std,
                                                                            augment))

    def take(self, index: torch.Tensor | slice) -> torch.Tensor:
        positions = range(len(self))[index] if isinstance(index, slice) else index.tolist()
        dataset = self._dataset(augment=False)
        return torch.stack([dataset[int(i)][0] for i in positions]) if len(positions) else torch.empty(0)

    def batches(
        self, order: torch.Tensor, batch_size: int, device: torch.device, augment: bool | str,
        generator: torch.Generator,
    ) -> Iterator[Batch]:
        from core.data.recipes import resolve_recipe

        loader = DataLoader(
            self._dataset(resolve_recipe(augment, self.image_size) != "none"), batch_size=batch_size,
            sampler=order.tolist(), num_workers=self.workers,
            pin_memory=device.type == "cuda", prefetch_factor=2 if self.workers else None,
            # workers' seeds (their augmentation) follow the epoch's generator: a rerun repeats them
            generator=torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator))),
        )
        for x, y, index in loader:
            yield to_device(x, device), to_device(y, device), index
