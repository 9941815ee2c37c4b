"""The first pass over an image list: decode each image once into a uint8 pixel file, in parallel.

Each image is opened with PIL's `draft` (a JPEG decodes at the smallest DCT scale that
still covers the target side), converted, resized by its shorter side and center-cropped
(core.data.transforms.fit_square). Worker processes (forked: they use only PIL and numpy)
write their share straight into the file at each image's offset, and return per-image
channel sums and sums of squares, so a set's mean and std later need no second pass.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.errors import DataError

log = logging.getLogger(__name__)

PARALLEL_MIN = 256  # fewer images decode in this process: forking costs more than it saves
WRITE_BLOCK = 64  # images decoded into memory before one write to the pixel file


def decode_pixels(file: Path, mode: str, image_size: int) -> np.ndarray:
    """(C, S, S) uint8 pixels of one image file, the evaluation view (shorter side to S, center crop)."""
    from PIL import Image, UnidentifiedImageError

    from core.data.transforms import image_pixels

    try:
        with Image.open(file) as img:
            if img.format == "JPEG":
                img.draft(mode, (image_size, image_size))
            return image_pixels(img, mode, image_size)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot decode image {file.parent.name}/{file.name}: {exc}", field="dataset") from exc


def _decode_range(args: tuple[str, Sequence[Path], str, int, int]) -> tuple[int, np.ndarray]:
    """Decode `files` (the set's images from `start` on) into the pixel file at their offsets, a block of
    images per write; (start, per-image [sum_c..., sumsq_c...] float64 in [0, 1] units)."""
    path, files, mode, image_size, start = args
    channels = 1 if mode == "L" else 3
    row = channels * image_size * image_size
    sums = np.empty((len(files), 2 * channels), dtype=np.float64)
    with open(path, "r+b") as out:
        for block in range(0, len(files), WRITE_BLOCK):
            chunk = files[block : block + WRITE_BLOCK]
            pixels = np.empty((len(chunk), channels, image_size, image_size), dtype=np.uint8)
            for i, file in enumerate(chunk):
                pixels[i] = decode_pixels(file, mode, image_size)
            out.seek((start + block) * row)
            out.write(pixels.data)
            flat = pixels.reshape(len(chunk), channels, -1)
            # exact integer sums, scaled once: the same numbers whichever process decoded the image
            sums[block : block + len(chunk), :channels] = flat.sum(axis=2, dtype=np.uint64) / 255.0
            squares = np.square(flat, dtype=np.uint32).sum(axis=2, dtype=np.uint64)
            sums[block : block + len(chunk), channels:] = squares / 255.0**2
    return start, sums


def decode_into(path: Path, files: Sequence[Path], mode: str, image_size: int, workers: int) -> np.ndarray:
    """Fill the pixel file `path` (already sized) with `files` decoded; returns the (N, 2C) per-image sums."""
    channels = 1 if mode == "L" else 3
    stats = np.empty((len(files), 2 * channels), dtype=np.float64)
    if workers < 1 or len(files) < PARALLEL_MIN or "fork" not in multiprocessing.get_all_start_methods():
        stats[:] = _decode_range((str(path), list(files), mode, image_size, 0))[1]
        return stats
    chunk = max(64, len(files) // (workers * 8))
    jobs = [(str(path), list(files[s : s + chunk]), mode, image_size, s) for s in range(0, len(files), chunk)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for start, sums in pool.imap_unordered(_decode_range, jobs):
            stats[start : start + len(sums)] = sums
    return stats


def default_prepare_workers() -> int:
    """DISTILL_DATA_WORKERS, else one decoding process per core (the first pass has the machine to itself)."""
    configured = os.environ.get("DISTILL_DATA_WORKERS")
    if configured is not None:
        return max(0, int(configured))
    return max(1, os.cpu_count() or 1)
