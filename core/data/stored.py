"""A split read from an image store (core.data.store): one path, two placements.

`StoreImages` is a subset (`rows`) of a store's images. Its pixels are either the store's
file loaded whole into RAM (`placement="memory"`, when the set fits the memory budget) or
read batch by batch from the file with `pread` (`placement="disk"`: only a batch is ever in
memory, and no mapped pages count against the process). Either way a batch leaves as uint8,
moves to the device (pinned, non-blocking on CUDA), is normalised there and augmented by the
spec's recipe with the epoch's generator: the two placements give bit-identical batches.
On disk, the next batch is read by a background thread while the current one trains.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from core.data.images import Batch, normalise, to_device
from core.data.recipes import apply_recipe
from core.data.store import ImageStore

PLACEMENTS = ("memory", "disk")


class StoreImages:
    """The images `rows` of `store`, with their labels; an ImageSet (see core.data.images)."""

    def __init__(
        self, store: ImageStore, rows: np.ndarray, mean: Sequence[float], std: Sequence[float], placement: str,
    ) -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}")
        self.store, self.rows, self.placement = store, np.asarray(rows, dtype=np.int64), placement
        self.labels = torch.from_numpy(store.labels[self.rows].astype(np.int64))
        self.mean, self.std = list(mean), list(std)
        self._ram: np.ndarray | None = None
        if placement == "memory":
            self._ram = np.fromfile(store.pixel_file, dtype=np.uint8).reshape(store.count, *store.shape)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def image_size(self) -> int:
        return int(self.store.shape[-1])

    def uint8(self, index: torch.Tensor | slice | Sequence[int]) -> torch.Tensor:
        """uint8 (n, C, S, S) of the samples at `index` (positions in this set), on the CPU."""
        positions = self.rows[index] if isinstance(index, slice) else self.rows[np.asarray(index, dtype=np.int64)]
        if self._ram is not None:
            return torch.from_numpy(self._ram[positions])
        return torch.from_numpy(_read_rows(self.store, positions))

    def take(self, index: torch.Tensor | slice) -> torch.Tensor:
        return normalise(self.uint8(index), self.mean, self.std)

    def view(self) -> LazyImages:
        """The whole set as a sliceable stand-in for a float tensor, read a slice at a time."""
        return LazyImages(self)

    def batches(
        self, order: torch.Tensor, batch_size: int, device: torch.device, augment: bool | str,
        generator: torch.Generator,
    ) -> Iterator[Batch]:
        starts = range(0, len(order), batch_size)
        with ThreadPoolExecutor(max_workers=1) as reader:
            ahead = reader.submit(self.uint8, order[0:batch_size]) if len(order) else None
            for start in starts:
                index = order[start : start + batch_size]
                pixels = ahead.result()
                nxt = start + batch_size
                ahead = reader.submit(self.uint8, order[nxt : nxt + batch_size]) if nxt < len(order) else None
                x = normalise(to_device(pixels, device), self.mean, self.std)
                x = apply_recipe(x, augment, generator) if augment else x
                yield x, to_device(self.labels[index], device), index


def _read_rows(store: ImageStore, positions: np.ndarray) -> np.ndarray:
    """The store's rows `positions`, read in ascending file order with one pread per run of adjacent rows."""
    row = store.row_bytes
    out = np.empty((len(positions), *store.shape), dtype=np.uint8)
    if not len(positions):
        return out
    flat = out.reshape(len(positions), row)
    order = np.argsort(positions, kind="stable")
    sorted_rows = positions[order]
    fd = os.open(store.pixel_file, os.O_RDONLY)
    try:
        run_start = 0
        for i in range(1, len(sorted_rows) + 1):
            if i < len(sorted_rows) and sorted_rows[i] == sorted_rows[i - 1] + 1:
                continue
            first, count = int(sorted_rows[run_start]), i - run_start
            data = os.pread(fd, count * row, first * row)
            if len(data) != count * row:
                raise OSError(f"image store {store.folder.name} is truncated")
            flat[order[run_start:i]] = np.frombuffer(data, dtype=np.uint8).reshape(count, row)
            run_start = i
    finally:
        os.close(fd)
    return out


class LazyImages:
    """Stands in for a set's whole normalised float tensor where callers only take its length and slices
    (evaluation, XDistillation targets): a set on disk is never read into RAM whole."""

    def __init__(self, images: StoreImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.images), *self.images.store.shape))

    @property
    def ndim(self) -> int:
        return 4

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def cpu(self) -> LazyImages:
        return self

    def repeat(self, *sizes: int) -> torch.Tensor:
        """Only asked of a set smaller than one batch (latency batches): small enough to read whole."""
        return self.images.take(slice(None)).repeat(*sizes)

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, int):
            return self.images.take(slice(index, index + 1))[0]
        return self.images.take(index)
