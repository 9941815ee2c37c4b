"""Atomic file writes: every file a job publishes appears whole or not at all.

A worker can be SIGKILLed mid-write. Writing into `<name>.tmp` next to the target,
flushing it to disk and renaming it over the target means a reader (the API
serving a download, the next attempt resuming, the storage sync) sees the old
file or the new one, never half of one. Storage backends copy through the same
helper. Readers skip `*.tmp` names.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_SUFFIX = ".tmp"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """`with atomic_path(target) as tmp:` write `tmp`; on success it is fsynced and renamed to `target`,
    on any error it is removed and `target` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def _fsync(path: Path) -> None:
    """Flush the file's data to disk before the rename makes it visible (a power cut keeps old or new)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
