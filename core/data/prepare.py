"""The first pass over an image list: decode each image once into a uint8 pixel file, in parallel.

Each image is opened with PIL's `draft` (a JPEG decodes at the smallest DCT scale that
still covers the target side), converted, resized by its shorter side and center-cropped
(core.data.transforms.fit_square). Forked worker processes (they use only PIL and numpy)
and the calling process write their blocks straight into the file at each image's offset,
and keep per-image channel sums and sums of squares, so a set's mean and std later need
no second pass.
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
    """Fill the pixel file `path` (already sized) with `files` decoded; returns the (N, 2C) per-image sums.

    `workers` forked processes and this one take blocks of images from a shared counter until none
    are left (no file list is pickled: the children inherit it), so the calling process decodes too.
    """
    channels = 1 if mode == "L" else 3
    stats = np.empty((len(files), 2 * channels), dtype=np.float64)
    if workers < 1 or len(files) < PARALLEL_MIN or "fork" not in multiprocessing.get_all_start_methods():
        stats[:] = _decode_range((str(path), files, mode, image_size, 0))[1]
        return stats
    context = multiprocessing.get_context("fork")
    chunk = max(64, len(files) // ((workers + 1) * 8))
    starts = list(range(0, len(files), chunk))
    counter, results = context.Value("l", 0), context.Queue()

    def claim() -> int | None:
        with counter.get_lock():
            index, counter.value = counter.value, counter.value + 1
        return starts[index] if index < len(starts) else None

    def work(report) -> int:  # noqa: ANN001 - a callable taking (start, sums)
        done = 0
        while (start := claim()) is not None:
            report(*_decode_range((str(path), files[start : start + chunk], mode, image_size, start)))
            done += 1
        return done

    def child() -> None:
        try:
            work(lambda start, sums: results.put((start, sums)))
        except Exception as exc:  # noqa: BLE001 - handed to the parent, which raises it as the user's error
            results.put((-1, str(exc)))

    def keep(start: int, sums: np.ndarray) -> None:
        stats[start : start + len(sums)] = sums

    processes = [context.Process(target=child, daemon=True) for _ in range(workers)]
    for process in processes:
        process.start()
    try:
        pending = len(starts) - work(keep)
        while pending:
            start, sums = results.get(timeout=600)
            if start < 0:
                raise DataError(str(sums), field="dataset")
            keep(start, sums)
            pending -= 1
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
    return stats


def default_prepare_workers() -> int:
    """DISTILL_DATA_WORKERS, else one decoding process per core (the first pass has the machine to itself)."""
    configured = os.environ.get("DISTILL_DATA_WORKERS")
    if configured is not None:
        return max(0, int(configured))
    return max(1, os.cpu_count() or 1)
