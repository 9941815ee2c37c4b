"""A split read from an image store (core.data.store): one path, two placements.

`StoreImages` is a subset (`rows`) of a store's images. Its pixels are either the store's
file loaded whole into RAM (`placement="memory"`, when the set fits the memory budget) or
the file memory-mapped (`placement="disk"`): a batch is one gather from the mapping, and
every DROP_BYTES read the process lets go of the pages it touched (the OS page cache keeps
them), so its resident memory stays flat whatever the set's size. Either way a batch leaves
as uint8, moves to the device (pinned, non-blocking on CUDA), is normalised there and
augmented by the spec's recipe with the epoch's generator: the two placements give
bit-identical batches.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from core.data.images import Batch, batches_of, normalise, to_device
from core.data.store import ImageStore

PLACEMENTS = ("memory", "disk")
DROP_BYTES = 32 << 20  # a set on disk keeps at most about this much of its file resident at a time


class StoreImages:
    """The images `rows` of `store`, with their labels; an ImageSet (see core.data.images)."""

    def __init__(
        self, store: ImageStore, rows: np.ndarray, mean: Sequence[float], std: Sequence[float], placement: str,
        shared: StoreImages | None = None,
    ) -> None:
        """`shared`: another set of the same store whose pixels this one reuses (a random held-out share and
        its training split are two row subsets of one store: it is loaded into RAM, or mapped, once)."""
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}")
        self.store, self.rows, self.placement = store, np.asarray(rows, dtype=np.int64), placement
        self.labels = torch.from_numpy(store.labels[self.rows].astype(np.int64))
        self.mean, self.std = list(mean), list(std)
        self._map: mmap.mmap | None = None
        if shared is not None and shared.store.folder == store.folder and shared.placement == placement:
            self._pixels, self._map = shared._pixels, shared._map
        elif placement == "memory" or store.nbytes == 0:
            self._pixels = np.fromfile(store.pixel_file, dtype=np.uint8).reshape(store.count, *store.shape)
        else:  # mapped, not read: a store the cache evicts while this set trains stays readable while mapped
            with open(store.pixel_file, "rb") as file:
                self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
            self._pixels = np.frombuffer(self._map, dtype=np.uint8).reshape(store.count, *store.shape)
        self._mapped_bytes = 0
        self._baseline = _resident_file_bytes() or 0

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def image_size(self) -> int:
        return int(self.store.shape[-1])

    def uint8(self, index: torch.Tensor | slice | Sequence[int]) -> torch.Tensor:
        """uint8 (n, C, S, S) of the samples at `index` (positions in this set), on the CPU."""
        positions = self.rows[index] if isinstance(index, slice) else self.rows[np.asarray(index, dtype=np.int64)]
        pixels = self._pixels[positions]  # one gather in C: a copy, from RAM or from the mapped file
        if self._map is not None:
            self._forget_pages(pixels.nbytes)
        return torch.from_numpy(pixels)

    def _forget_pages(self, nbytes: int) -> None:
        """Once the process's resident file pages grew by DROP_BYTES, let go of the mapped pages touched so far:
        the OS page cache keeps them (later epochs still read at memory speed) but they stop counting in this
        process's resident memory, which so stays flat however large the set.

        Measured, not counted from the bytes asked for: one touched row can map a whole large page-cache folio
        (megabytes), so a batch of 64 random rows may map many times its own size."""
        resident = _resident_file_bytes()
        if resident is None:  # no /proc: count the bytes asked for instead
            self._mapped_bytes += nbytes
            resident, self._baseline = self._mapped_bytes, 0
        if resident - self._baseline >= DROP_BYTES and self._map is not None:
            self._map.madvise(mmap.MADV_DONTNEED)
            self._mapped_bytes = 0
            self._baseline = _resident_file_bytes() or 0

    def take(self, index: torch.Tensor | slice) -> torch.Tensor:
        return normalise(self.uint8(index), self.mean, self.std)

    def view(self) -> LazyImages:
        """The whole set as a sliceable stand-in for a float tensor, read a slice at a time."""
        return LazyImages(self)

    def batches(
        self, order: torch.Tensor, batch_size: int, device: torch.device, augment: bool | str,
        generator: torch.Generator,
    ) -> Iterator[Batch]:
        def read(index: torch.Tensor) -> torch.Tensor:
            return normalise(to_device(self.uint8(index), device), self.mean, self.std)

        return batches_of(order, batch_size, device, augment, generator, read, self.labels)


def _resident_file_bytes() -> int | None:
    """This process's resident shared (file-backed) memory, from /proc/self/statm; None where there is none."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[2]) * mmap.PAGESIZE
    except (OSError, ValueError, IndexError):
        return None


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
