"""Where an upload waits on disk: the received file, and the staging folders it is checked in.

Everything is staged under DISTILL_HOME/tmp, on the same filesystem as the final
destination, so keeping an upload is one atomic rename and a failed one leaves
nothing where readers look. Each upload has one folder of its own there, owned by the
receiving process (store.temp_files), holding its file and its staging tree: removing
the folder removes all of it, and a folder whose owner died is swept away. Shared by the HTTP receiver (api.uploads) and the
checks that decide what is kept (api.services.model_uploads, dataset_uploads).
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from core.spec import has_control_characters
from store.settings import Settings
from store.temp_files import new_owned_folder, tmp_root

MIB = 1024 * 1024


def tmp_dir(settings: Settings) -> Path:
    """Uploads are staged on the same filesystem as their destination, so the final move is one atomic rename."""
    return tmp_root(settings)


def new_upload_folder(settings: Settings) -> Path:
    """The one folder of one upload (its file and its staging tree), owned by this process."""
    return new_owned_folder(settings, "upload")


def new_staging_dir(settings: Settings, parent: Path | None = None) -> Path:
    """An empty folder for one upload's unpacking, inside the upload's own folder when given; the caller removes it."""
    path = (parent or tmp_dir(settings)) / f"staging-{uuid.uuid4().hex}"
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
    folder: Path | None = None  # the upload's own folder under DISTILL_HOME/tmp (removed whole by discard)

    def discard(self) -> None:
        """Remove the received file and the upload's folder; harmless when a service already moved it into place."""
        self.path.unlink(missing_ok=True)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def default_name(self, fallback: str) -> str:
        """A record's name when the client gave none: the file's stem, cut to the column's 200 characters."""
        stem = PurePosixPath(self.filename.replace("\\", "/")).stem
        printable = "".join(char for char in stem if not has_control_characters(char))
        return (printable or fallback)[:200]
