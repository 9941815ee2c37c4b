"""Streamed uploads: a file object that reports how many bytes httpx has read from it.

httpx's multipart encoder reads file objects in chunks, so a large dataset is
never held in memory; wrapping the file lets a caller drive a progress bar from
those reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import BinaryIO

ProgressCallback = Callable[[int], None]  # called with the number of bytes just sent


class ProgressReader:
    """Wraps a binary file; every read() reports its byte count to `on_bytes`."""

    def __init__(self, file: BinaryIO, on_bytes: ProgressCallback | None) -> None:
        self._file = file
        self._on_bytes = on_bytes

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        if chunk and self._on_bytes is not None:
            self._on_bytes(len(chunk))
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        """Lets httpx size the body from the file (Content-Length) instead of sending it chunked."""
        return self._file.fileno()
