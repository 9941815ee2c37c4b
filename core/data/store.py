"""Decode once, read many: a verified uint8 pixel store per (image list, image size, colour mode).

A store is a folder under the cache directory (`DISTILL_DATA_CACHE_DIR`, default
`$DISTILL_HOME/cache/images`, where DISTILL_HOME defaults to `./var`):

- `pixels.u8`: the images, (N, C, S, S) uint8, row after row (read with `pread`, or
  loaded whole into RAM when the set fits the memory budget: one store, two placements);
- `stats.npy`: per-image channel sums and sums of squares (any subset's mean/std for free);
- `manifest.json`, written last: version, the source digest (every file's name, size and
  mtime, the labels, mode and size), count, shape, byte length and CRC32s of sampled blocks.

A store whose manifest is missing or unreadable, whose digest differs (the files changed),
whose pixel file has the wrong length or whose sampled CRCs differ is rebuilt, never read.
Building happens in a temporary folder renamed into place under an exclusive file lock, so
two jobs preparing the same set at once produce one store (the second waits, then reads it).
The cache is bounded by `DISTILL_DATA_CACHE_MB` (default 20480): before a build, the least
recently used stores (by their `last_used` stamp, touched on every open) are removed until
the new one fits; a store being built or opened by another process is never removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data.prepare import decode_into, default_prepare_workers

log = logging.getLogger(__name__)

STORE_VERSION = 1
DEFAULT_CACHE_MB = 20480
CRC_BLOCKS, CRC_BLOCK = 16, 1 << 16


def cache_dir() -> Path:
    """Where stores live on this machine (the worker's local disk)."""
    configured = os.environ.get("DISTILL_DATA_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("DISTILL_HOME") or "var") / "cache" / "images"  # DISTILL_HOME's default: ./var


def cache_bytes() -> int:
    return int(float(os.environ.get("DISTILL_DATA_CACHE_MB", DEFAULT_CACHE_MB)) * 1024 * 1024)


def source_digest(files: Sequence[Path], labels: np.ndarray, mode: str, image_size: int) -> str:
    """What the store's pixels are a function of: each file's path, size and mtime, the labels, mode and size."""
    digest = hashlib.sha256(f"v{STORE_VERSION}|{mode}|{image_size}|{len(files)}".encode())
    for file in files:
        stat = os.stat(file)
        digest.update(f"|{file}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


@dataclass
class ImageStore:
    """An opened, verified store. `built` says whether this call decoded it (False: it was already there)."""

    folder: Path
    count: int
    shape: tuple[int, int, int]
    labels: np.ndarray
    built: bool

    @property
    def pixel_file(self) -> Path:
        return self.folder / "pixels.u8"

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.count * self.row_bytes

    def stats(self) -> np.ndarray:
        """(N, 2C) float64: per-image channel sums and sums of squares of pixels in [0, 1] units."""
        return np.load(self.folder / "stats.npy", allow_pickle=False)


def open_or_build(
    files: Sequence[Path], labels: np.ndarray, mode: str, image_size: int,
    root: Path | None = None, capacity: int | None = None, workers: int | None = None,
) -> ImageStore:
    """The verified store of `files` at `image_size`: opened when valid, else built (once, under a lock)."""
    root = cache_dir() if root is None else root
    root.mkdir(parents=True, exist_ok=True)
    digest = source_digest(files, labels, mode, image_size)
    channels = 1 if mode == "L" else 3
    expect = {"digest": digest, "count": len(files), "shape": [channels, image_size, image_size]}
    folder = root / f"{digest[:40]}-{image_size}"
    with file_lock(root, folder.name, shared=True):
        found = _open_valid(folder, expect, labels)
    if found is not None:
        return found
    with file_lock(root, folder.name, shared=False):
        found = _open_valid(folder, expect, labels)  # another process built it while we waited
        if found is not None:
            return found
        if folder.exists():
            log.warning("image store %s is stale or damaged: rebuilding it", folder.name)
            shutil.rmtree(folder)
        nbytes = len(files) * channels * image_size**2
        evict(root, (cache_bytes() if capacity is None else capacity) - nbytes, keep=folder.name)
        _build(folder, files, mode, image_size, expect, default_prepare_workers() if workers is None else workers)
        return ImageStore(folder, len(files), (channels, image_size, image_size), labels, built=True)


def _build(folder: Path, files: Sequence[Path], mode: str, image_size: int, expect: dict, workers: int) -> None:
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        pixels = tmp / "pixels.u8"
        nbytes = len(files) * int(np.prod(expect["shape"]))
        with open(pixels, "wb") as out:
            out.truncate(nbytes)
        started = time.perf_counter()
        stats = decode_into(pixels, files, mode, image_size, workers)
        np.save(tmp / "stats.npy", stats)
        manifest = {"version": STORE_VERSION, **expect, "nbytes": nbytes, "crc": _sampled_crc(pixels, nbytes)}
        _write_synced(tmp / "manifest.json", json.dumps(manifest).encode())
        touch(tmp)
        os.rename(tmp, folder)
        log.info("image store %s: decoded %d images once in %.1fs (%d bytes)", folder.name, len(files),
                 time.perf_counter() - started, nbytes)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _open_valid(folder: Path, expect: dict, labels: np.ndarray) -> ImageStore | None:
    """The store at `folder` if it is complete and matches `expect`; None otherwise (never raises)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_bytes())
        if manifest.get("version") != STORE_VERSION or any(manifest.get(k) != v for k, v in expect.items()):
            return None
        pixels = folder / "pixels.u8"
        nbytes = int(manifest["nbytes"])
        if pixels.stat().st_size != nbytes or manifest["crc"] != _sampled_crc(pixels, nbytes):
            return None
        if not (folder / "stats.npy").is_file():
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    touch(folder)
    return ImageStore(folder, int(manifest["count"]), tuple(manifest["shape"]), labels, built=False)


def _sampled_crc(path: Path, nbytes: int) -> list[int]:
    """CRC32 of `CRC_BLOCKS` evenly spaced blocks (first and last included): cheap whatever the size."""
    if nbytes <= CRC_BLOCKS * CRC_BLOCK:
        offsets = [0]
        length = nbytes
    else:
        step = (nbytes - CRC_BLOCK) // (CRC_BLOCKS - 1)
        offsets, length = [i * step for i in range(CRC_BLOCKS)], CRC_BLOCK
    with open(path, "rb") as f:
        return [zlib.crc32(os.pread(f.fileno(), length, offset)) for offset in offsets]


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def touch(folder: Path) -> None:
    """Stamp the store as just used (the cache's least-recently-used order)."""
    with contextlib.suppress(OSError):
        (folder / "last_used").write_text(repr(time.time()))


def _last_used(folder: Path) -> float:
    try:
        return float((folder / "last_used").read_text())
    except (OSError, ValueError):
        return 0.0


@contextlib.contextmanager
def file_lock(root: Path, name: str, shared: bool, block: bool = True) -> Iterator[bool]:
    """flock on `root/.<name>.lock`: shared while opening, exclusive while building or evicting."""
    with open(root / f".{name}.lock", "a+b") as handle:
        flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if block else fcntl.LOCK_NB)
        try:
            fcntl.flock(handle, flags)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def store_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def evict(root: Path, budget: int, keep: str) -> list[str]:
    """Remove least recently used stores until the others take at most `budget` bytes; returns their names.

    A store another process holds a lock on (opening or building it) is skipped.
    """
    stores = [f for f in root.iterdir() if f.is_dir() and not f.name.startswith(".") and f.name != keep]
    total = sum(store_bytes(f) for f in stores)
    removed: list[str] = []
    for folder in sorted(stores, key=_last_used):
        if total <= max(0, budget):
            break
        with file_lock(root, folder.name, shared=False, block=False) as held:
            if not held:
                continue
            size = store_bytes(folder)
            shutil.rmtree(folder, ignore_errors=True)
        total -= size
        removed.append(folder.name)
        log.info("image cache: evicted %s (%d bytes, least recently used)", folder.name, size)
    return removed
