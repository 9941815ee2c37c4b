"""From a dataset spec to a `DataBundle`: source, split, few-shot subset, memory or stream, normalisation.

An ImageFolder's splits are decoded once into verified uint8 stores on this machine's disk
(core.data.store) that every later job reads; a set is held in RAM when its stores fit
the memory budget (`DISTILL_DATA_MEMORY_MB`, default 2048) and read from disk batch by
batch above it (core.data.stored). With the image cache off (`DISTILL_DATA_CACHE_MB=0`)
the old paths remain: decoded into memory below the budget, streamed from the files above
(core.data.stream). Normalisation uses the training split's per-channel mean and std (every
image's, kept by the store; or a fixed sample of a streamed set).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.data import sources
from core.data.bundle import DataBundle
from core.data.images import MemoryImages
from core.data.splits import check_classes, few_shot, random_split
from core.data.store import ImageStore, cache_bytes, open_or_build
from core.data.stored import StoreImages
from core.data.stream import StreamImages
from core.errors import DataError
from core.resolver import LocalFiles, Resolver
from core.spec import DatasetSpec

log = logging.getLogger(__name__)

DEFAULT_MEMORY_BUDGET_MB = 2048
STATS_SAMPLE = 512  # images decoded to estimate mean/std of a streamed set


def memory_budget_bytes() -> int:
    return int(float(os.environ.get("DISTILL_DATA_MEMORY_MB", DEFAULT_MEMORY_BUDGET_MB)) * 1024 * 1024)


def load_dataset(
    spec: DatasetSpec, seed: int | None = None, named: Mapping[str, Path] | None = None,
    memory_budget: int | None = None, resolver: Resolver | None = None,
) -> DataBundle:
    """Resolve the spec's source, split, subsample (shots_per_class) and normalise.

    `seed` overrides `spec.split_seed` (tests use it to compare splits). `named` maps
    operator-registered names to paths; `digits` is always known. `resolver` reads an
    uploaded dataset's `spec.id` (the host's: a worker fetches it from its store; by default
    ids are refused, as on the command line). `memory_budget` (bytes) overrides the setting.
    """
    seed = spec.split_seed if seed is None else seed
    budget = memory_budget_bytes() if memory_budget is None else memory_budget
    source = _source(spec, dict(named or {}), resolver or LocalFiles())
    if isinstance(source, sources.ArraySource):
        bundle = _from_arrays(source, spec, seed)
    else:
        bundle = _from_folder(source, spec, seed, budget)
    log.info("dataset ready: %d train, %d test (%s split), %d classes, %d channels, %dpx, %s",
             len(bundle.train), len(bundle.test), bundle.test_split, bundle.num_classes, bundle.in_channels,
             spec.image_size, "streamed" if bundle.streamed else "in memory")
    return bundle


def _source(
    spec: DatasetSpec, named: dict[str, Path], resolver: Resolver
) -> sources.ArraySource | sources.FolderSource:
    if spec.name == "digits":
        return sources.digits()
    if spec.name is not None:
        if spec.name not in named:
            known = ", ".join(sorted({"digits", *named}))
            raise DataError(f"unknown dataset '{spec.name}'; known: {known}", field="dataset.name")
        return sources.read_path(Path(named[spec.name]))
    if spec.path is not None:
        return sources.read_path(Path(spec.path))
    assert spec.id is not None  # DatasetSpec holds exactly one of name, path, id
    return sources.read_path(resolver.resolve_dataset(spec.id), field="dataset.id")


def _from_arrays(source: sources.ArraySource, spec: DatasetSpec, seed: int) -> DataBundle:
    x, y, test_x, test_y, split = source.x, source.y, source.test_x, source.test_y, "arrays"
    if test_x is None or test_y is None:
        train_idx, test_idx = random_split(y, spec.test_fraction, seed)
        x, y, test_x, test_y, split = x[train_idx], y[train_idx], x[test_idx], y[test_idx], "random"
    if spec.shots_per_class is not None:
        keep = few_shot(y, spec.shots_per_class, seed)
        x, y = x[keep], y[keep]
    check_classes(y, test_y, len(source.class_names))
    train, test = _to_uint8(x, spec.image_size), _to_uint8(test_x, spec.image_size)
    mean, std = _statistics(train)
    return DataBundle(MemoryImages(train, torch.from_numpy(y), mean, std),
                      MemoryImages(test, torch.from_numpy(test_y), mean, std), source.class_names, mean, std, split)


def _to_uint8(x: np.ndarray, image_size: int) -> torch.Tensor:
    """Array images at `image_size` x `image_size` as uint8 (bilinear resize of the whole batch, as before)."""
    tensor = torch.from_numpy(x)
    if tuple(tensor.shape[-2:]) == (image_size, image_size):
        return tensor if tensor.dtype == torch.uint8 else (tensor * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    scaled = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
    resized = F.interpolate(scaled, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return (resized.clamp_(0, 1) * 255.0).round_().to(torch.uint8)


def _statistics(pixels: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, accumulated in float64 chunks (no float copy)."""
    channels = pixels.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(pixels), 1024):
        chunk = pixels[start : start + 1024].to(torch.float64).div_(255.0)
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.pow(2).sum(dim=(0, 2, 3))
    count = pixels.numel() // channels
    mean = total / count
    var = (total_sq / count - mean.pow(2)).clamp_min(0) * count / max(1, count - 1)
    return mean.float().tolist(), var.sqrt().clamp_min(1e-3).float().tolist()


def _from_folder(source: sources.FolderSource, spec: DatasetSpec, seed: int, budget: int) -> DataBundle:
    """An ImageFolder source through its decoded-once stores (or streamed when the image cache is off)."""
    labels, train_rows = source.labels, np.arange(len(source.files))
    if source.test_files is None or source.test_labels is None:
        train_rows, test_rows = random_split(labels, spec.test_fraction, seed)
        test_files, test_labels, split = source.files, labels, "random"
    else:
        test_files, test_labels, split = source.test_files, source.test_labels, source.test_split or "random"
        test_rows = np.arange(len(test_files))
    if spec.shots_per_class is not None:
        train_rows = train_rows[few_shot(labels[train_rows], spec.shots_per_class, seed)]
    check_classes(labels[train_rows], test_labels[test_rows], len(source.class_names))
    if cache_bytes() <= 0:
        return _streamed(source, spec, seed, budget, [source.files[i] for i in train_rows], labels[train_rows],
                         [test_files[i] for i in test_rows], test_labels[test_rows], split)
    train_store = open_or_build(source.files, labels, source.mode, spec.image_size)
    test_store = train_store if source.test_files is None else open_or_build(
        test_files, test_labels, source.mode, spec.image_size)
    held = train_store.nbytes + (0 if test_store is train_store else test_store.nbytes)
    mean, std = store_statistics(train_store, train_rows)
    train_place = "memory" if held <= budget else "disk"
    test_place = "memory" if test_store.nbytes <= budget else "disk"
    train_set = StoreImages(train_store, train_rows, mean, std, train_place)
    test_set = StoreImages(test_store, test_rows, mean, std, test_place, shared=train_set)
    return DataBundle(train_set, test_set, source.class_names, mean, std, split, streamed=train_place == "disk")


def store_statistics(store: ImageStore, rows: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a store's images `rows`, from the per-image sums kept at decoding time."""
    channels = store.shape[0]
    sums = store.stats()[rows].sum(axis=0)
    count = len(rows) * store.shape[1] * store.shape[2]
    mean = sums[:channels] / count
    var = np.clip(sums[channels:] / count - mean**2, 0, None) * count / max(1, count - 1)
    return (torch.from_numpy(mean).float().tolist(),
            torch.from_numpy(np.sqrt(var)).clamp_min(1e-3).float().tolist())


def _streamed(
    source: sources.FolderSource, spec: DatasetSpec, seed: int, budget: int, files: list[Path], labels: np.ndarray,
    test_files: list[Path], test_labels: np.ndarray, split: str,
) -> DataBundle:
    """Without an image cache (DISTILL_DATA_CACHE_MB=0): decoded into memory below the budget, else streamed."""
    image_bytes = source.in_channels * spec.image_size**2
    if (len(files) + len(test_files)) * image_bytes <= budget:
        train = sources.decode_images(files, source.mode, spec.image_size)
        test = sources.decode_images(test_files, source.mode, spec.image_size)
        mean, std = _statistics(torch.from_numpy(train))
        return DataBundle(MemoryImages(torch.from_numpy(train), torch.from_numpy(labels), mean, std),
                          MemoryImages(torch.from_numpy(test), torch.from_numpy(test_labels), mean, std),
                          source.class_names, mean, std, split)
    sample = np.random.default_rng(seed).permutation(len(files))[:STATS_SAMPLE]
    mean, std = _statistics(torch.from_numpy(sources.decode_images([files[i] for i in sample], source.mode,
                                                                   spec.image_size)))
    train_set = StreamImages(files, torch.from_numpy(labels), source.mode, spec.image_size, mean, std)
    if len(test_files) * image_bytes <= budget:  # evaluation reads the test split whole: keep it in memory if it fits
        test_set = MemoryImages(torch.from_numpy(sources.decode_images(test_files, source.mode, spec.image_size)),
                                torch.from_numpy(test_labels), mean, std)
    else:
        test_set = StreamImages(test_files, torch.from_numpy(test_labels), source.mode, spec.image_size, mean, std)
    return DataBundle(train_set, test_set, source.class_names, mean, std, split, streamed=True)
