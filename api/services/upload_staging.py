"""Where an upload waits on disk: the received file, and the staging folders it is checked in.

Everything is staged under DISTILL_HOME/tmp, on the same filesystem as the final
destination, so keeping an upload is one atomic rename and a failed one leaves
nothing where readers look. Shared by the HTTP receiver (api.uploads) and the
checks that decide what is kept (api.services.model_uploads, dataset_uploads).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from core.spec import has_control_characters
from store.settings import Settings

MIB = 1024 * 1024


def tmp_dir(settings: Settings) -> Path:
    """Uploads are staged on the same filesystem as their destination, so the final move is one atomic rename."""
    path = settings.distill_home / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_staging_dir(settings: Settings) -> Path:
    """An empty folder of its own for one upload's unpacking; the caller removes it."""
    path = tmp_dir(settings) / f"staging-{uuid.uuid4().hex}"
    path.mkdir()
    return path


@dataclass
class ReceivedUpload:
    """The text fields of a multipart form and its one file, already on disk under DISTILL_HOME/tmp."""

    fields: dict[str, str]
    path: Path
    filename: str
    size_bytes: int
    sha256: str

    def discard(self) -> None:
        """Remove the received file; harmless when a service already moved it into place."""
        self.path.unlink(missing_ok=True)

    def default_name(self, fallback: str) -> str:
        """A record's name when the client gave none: the file's stem, cut to the column's 200 characters."""
        stem = PurePosixPath(self.filename.replace("\\", "/")).stem
        printable = "".join(char for char in stem if not has_control_characters(char))
        return (printable or fallback)[:200]
