"""Job documents as JSON bytes, built straight from the row: the hot path of every poll.

A dashboard polls `GET /v1/jobs/{id}` once a second per user, so the body is
built as plain dicts and encoded with orjson instead of being validated twice
by pydantic (once building `JobOut`, once more as FastAPI's response model).
`api.schemas.JobOut` stays the documented shape; `tests/api/test_documents.py`
pins that both agree.

Two views:
- `full` (the default): everything, including the spec, the per-epoch `history`
  in `metrics` and the artifact list.
- `summary`: what a poller needs to draw a row or a progress bar: state, stage,
  progress, error, times, `version` and `metrics` without `history`; no spec and
  no artifacts (so the artifact table is not read either).
"""

from __future__ import annotations

import logging
import threading
from enum import Enum
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
from pydantic import ValidationError

from api.schemas import ProgressOut
from store.models import Artifact, Job
from store.repository import JOB_FULL_COLUMNS

if TYPE_CHECKING:

    from sqlalchemy.engine import Row

    JobLike = Job | Row[Any]  # an ORM job (after a write) or a row of repository.JOB_*_COLUMNS (reads)
    ArtifactLike = Artifact | Row[Any]

log = logging.getLogger(__name__)

JOB_FULL_KEYS = tuple(column.key for column in JOB_FULL_COLUMNS)

_ORJSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC  # same "...Z" timestamps pydantic writes


class JobView(str, Enum):
    full = "full"
    summary = "summary"


def encode(document: Any) -> bytes:
    """JSON bytes of a document of dicts, lists, numbers, strings and datetimes."""
    return orjson.dumps(document, option=_ORJSON_OPTIONS)


def artifact_document(artifact: ArtifactLike) -> dict[str, Any]:
    if isinstance(artifact, Artifact):
        job_id, name, size_bytes, content_type = (artifact.job_id, artifact.name, artifact.size_bytes,
                                                  artifact.content_type)
    else:  # a row of (job_id, name, size_bytes, content_type): unpacked, which is 10x cheaper than by name
        job_id, name, size_bytes, content_type = artifact
    url = f"/v1/jobs/{quote(job_id, safe='')}/artifacts/{quote(name, safe='/')}"
    return {"name": name, "size_bytes": size_bytes, "content_type": content_type, "url": url}


def progress_document(job_id: str, progress: dict[str, Any] | None) -> dict[str, Any] | None:
    """The worker writes progress; a malformed blob must not turn a GET into a 500."""
    if not progress:
        return None
    try:
        return ProgressOut.model_validate(progress).model_dump()
    except ValidationError:
        log.warning("job %s: unreadable progress blob %r", job_id, progress)
        return None


def _summary_metrics(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    return {key: value for key, value in metrics.items() if key != "history"}


def _values(job: JobLike) -> tuple[Any, ...]:
    """The job's values in repository.JOB_FULL_COLUMNS order (a summary row stops before `spec`)."""
    if isinstance(job, Job):
        return tuple(getattr(job, key) for key in JOB_FULL_KEYS)
    return tuple(job)


def job_document(job: JobLike, view: JobView = JobView.full, artifacts: Sequence[ArtifactLike] | None = None
                 ) -> dict[str, Any]:
    """The job as the API shows it (JobOut's fields, in JobOut's order).

    `job` is an ORM job (after a write) or a row of repository.JOB_*_COLUMNS (a read), taken
    apart by position. `artifacts` are the job's artifacts for the full view; an ORM job
    brings its own."""
    (job_id, name, status, stage, progress, metrics, error_code, error_message, error_field, error_where,
     attempts, created_at, started_at, finished_at, version, *rest) = _values(job)
    summary = view is JobView.summary
    error = None
    if error_code:
        error = {"code": error_code, "message": error_message or "", "field": error_field, "where": error_where}
    document: dict[str, Any] = {
        "id": job_id,
        "name": name,
        "status": status,
        "stage": stage,
        "progress": progress_document(job_id, progress),
        "metrics": _summary_metrics(metrics) if summary else metrics,
        "error": error,
        "attempts": attempts or 0,
        "created_at": created_at,
        "started_at": started_at,
        "finished_at": finished_at,
    }
    if not summary:
        listed = job.artifacts if artifacts is None else artifacts  # type: ignore[union-attr]
        document["artifacts"] = [artifact_document(artifact) for artifact in listed]
        document["spec"] = rest[0]
    document["version"] = version or 0
    return document


class DocumentCache:
    """Encoded job documents by (job id, version, view): a version names one content, so an entry never goes stale.

    A dashboard re-reads the same jobs every second and most of them have not changed: with
    the version from a one-column lookup, their bytes come from here instead of reading,
    decoding and encoding the row again. Bounded; the oldest entries go first. Each API
    process has its own (the version comes from the shared database, so they never disagree).
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: dict[tuple[str, int, str], bytes] = {}
        self._lock = threading.Lock()

    def get(self, job_id: str, version: int, view: JobView) -> bytes | None:
        return self._entries.get((job_id, version, view.value))

    def put(self, job_id: str, version: int, view: JobView, body: bytes) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[(job_id, version, view.value)] = body


def page_body(items: Sequence[bytes], next_cursor: str | None) -> bytes:
    """A page `{"items": [...], "next_cursor": ...}` from already-encoded job documents."""
    return b'{"items":[' + b",".join(items) + b'],"next_cursor":' + encode(next_cursor) + b"}"
