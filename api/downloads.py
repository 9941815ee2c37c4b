"""Serving a recorded artifact from a remote store: streamed through the API, or a presigned redirect.

The object key comes from the recorded row (written by the server), never from the client's
name, exactly as for files under DISTILL_HOME.
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath

from fastapi.responses import RedirectResponse, Response, StreamingResponse

from api.errors import ApiError
from store.models import Artifact
from store.settings import Settings
from store.storage import MissingObject, Storage, check_key

log = logging.getLogger(__name__)


def content_disposition(artifact: Artifact) -> str:
    inline = artifact.content_type.startswith(("image/", "application/json", "text/"))
    filename = PurePosixPath(artifact.name).name.replace('"', "")
    return f'{"inline" if inline else "attachment"}; filename="{filename}"'


def stream_artifact(storage: Storage, settings: Settings, artifact: Artifact, not_found: ApiError) -> Response:
    """307 to a presigned URL when DISTILL_STORAGE_REDIRECT is on, else the bytes streamed in chunks."""
    try:
        key = check_key(artifact.relpath)
    except ValueError:
        log.error("job %s: artifact %r has an unusable key; refused", artifact.job_id, artifact.name)
        raise not_found from None
    if settings.storage_redirect:
        url = storage.presigned_url(key, settings.presign_expires_s, PurePosixPath(artifact.name).name)
        if url is not None:
            return RedirectResponse(url, status_code=307)
    try:
        chunks = storage.iter_bytes(key)
    except MissingObject:
        log.warning("job %s: artifact %r is recorded but its object is missing", artifact.job_id, artifact.name)
        raise not_found from None
    headers = {"Content-Disposition": content_disposition(artifact), "Content-Length": str(artifact.size_bytes)}
    return StreamingResponse(chunks, media_type=artifact.content_type, headers=headers)
