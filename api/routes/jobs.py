"""Jobs: create (validated, committed, then enqueued), list, read, cancel, stream events, download artifacts."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.responses import FileResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from api.conditional import job_etag, json_response
from api.deps import CallerDep, CeleryDep, SessionDep, SettingsDep, StateDep, StorageDep
from api.documents import JobView, encode, job_document
from api.downloads import stream_artifact
from api.errors import ApiError
from api.events import job_events
from api.polls import (
    CURSOR_MAX_LENGTH, IF_NONE_MATCH_MAX_LENGTH, JOB_ID_MAX_LENGTH, JOB_ID_PATTERN, PAGE_DEFAULT_LIMIT,
    PAGE_MAX_LIMIT, job_not_found, poll_job, poll_page,
)
from api.routes import API_V1
from api.ratelimit import write_route
from api.schemas import (
    ERROR_RESPONSES, WRITE_ERROR_RESPONSES, JOB_SPEC_EXAMPLES, ErrorResponse, JobOut, JobPage, as_json_errors,
)
from api.services.submissions import submit_job
from core.publish.manifest import REPORT, example_names
from core.spec import JobSpec, has_control_characters
from store import repository
from store.artifacts import UnsafeArtifactPath, artifact_path
from store.models import Job, JobStatus

log = logging.getLogger(__name__)

router = APIRouter(prefix=f"{API_V1}/jobs", tags=["jobs"])

JobId = Annotated[str, Path(min_length=1, max_length=JOB_ID_MAX_LENGTH, pattern=JOB_ID_PATTERN,
                            description="Job id, e.g. 'job_5f0c2a9d3e1b4c7a'.")]
_NOT_FOUND = {404: {"model": ErrorResponse, "description": "No job with that id (`job_not_found`)."}}


def load_job(session: Session, job_id: str, owner: str | None) -> Job:
    """The job if `owner` may see it (None: any job); another key's job is a 404 like a missing one."""
    try:
        return repository.get_job(session, job_id, owner)
    except repository.NotFound:
        raise job_not_found(job_id) from None


@router.post("", **write_route(
    201,
    response_model=JobOut,
    summary="Submit a distillation job",
    responses={
        200: {"model": JobOut, "description": "Replay: the Idempotency-Key was seen with this same body."},
        409: {"model": ErrorResponse, "description": "Idempotency-Key reused with another body."},
        **WRITE_ERROR_RESPONSES,
    },
))
def create_job(
    spec: Annotated[JobSpec, Body(openapi_examples=JOB_SPEC_EXAMPLES)],  # type: ignore[arg-type]
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    caller: CallerDep,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x20-\x7e]+$",
               description="Retry-safe submission: the same key and body return the same job."),
    ] = None,
) -> Response:
    job, created = submit_job(spec, session=session, settings=settings, celery=celery, owner=caller.owner,
                              scope=caller.scope, idempotency_key=idempotency_key)
    if not created:
        response = _job_response(job)
        response.headers["Idempotent-Replayed"] = "true"
        return response
    return _job_response(job, status_code=201)


ViewQuery = Annotated[JobView, Query(description="`full` (default): the whole job, with spec, artifacts and the "
                                     "per-epoch `metrics.history`. `summary`: state, stage, progress, error, times "
                                     "and metrics without `history`; no spec, no artifacts. For pollers.")]
IfNoneMatch = Annotated[str | None, Header(alias="If-None-Match", max_length=IF_NONE_MATCH_MAX_LENGTH,
                                           description="An `ETag` from an earlier answer: 304 while it is current.")]
_CONDITIONAL = {304: {"description": "Not Modified: the `If-None-Match` ETag is current (no body)."}}


def _job_response(job: Job, view: JobView = JobView.full, status_code: int = 200) -> Response:
    """A written job answered with the same bytes and ETag a poll of it would give (api.polls)."""
    etag = job_etag(job.id, job.version or 0, view.value)
    return json_response(encode(job_document(job, view)), etag, status_code)


@router.get("", summary="List jobs, newest first", response_model=JobPage,
            responses={**_CONDITIONAL, **ERROR_RESPONSES})
async def list_jobs(
    state: StateDep,
    caller: CallerDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX_LIMIT, description="Page size.")] = PAGE_DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=CURSOR_MAX_LENGTH,
                                        description="`next_cursor` of the previous page.")] = None,
    view: ViewQuery = JobView.full,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """The page carries an `ETag` (from its jobs' ids and versions); `If-None-Match` with it answers 304
    until a job on the page changes or the page's membership does."""
    return await poll_page(state, status=status, limit=limit, cursor=cursor, view=view, if_none_match=if_none_match,
                           owner=caller.scope)


@router.get("/{job_id}", summary="A job's state, progress, metrics, error and artifacts", response_model=JobOut,
            responses={**_CONDITIONAL, **_NOT_FOUND, **ERROR_RESPONSES})
async def get_job(state: StateDep, job_id: JobId, caller: CallerDep, view: ViewQuery = JobView.full,
                  if_none_match: IfNoneMatch = None) -> Response:
    """`ETag` is the job's version: poll with `If-None-Match` and get 304 (no body) until the job changes."""
    return await poll_job(state, job_id=job_id, view=view, if_none_match=if_none_match, owner=caller.scope)


@router.post("/{job_id}/cancel", **write_route(
    202,
    response_model=JobOut,
    summary="Cancel a job",
    description="A queued job is cancelled at once; a running one becomes `cancelling` and stops at its next step.",
    responses={**_NOT_FOUND, 409: {"model": ErrorResponse, "description": "The job already ended (`job_finished`)."},
               **WRITE_ERROR_RESPONSES},
))
def cancel_job(job_id: JobId, session: SessionDep, caller: CallerDep) -> Response:
    try:
        job = repository.request_cancel(session, job_id, caller.scope)  # IllegalTransition -> 409 job_finished
    except repository.NotFound:
        raise job_not_found(job_id) from None
    log.info("job %s: cancel requested; now %s", job_id, job.status)
    return _job_response(job, status_code=202)


def _job_exists(reader: Engine, job_id: str, owner: str | None) -> None:
    """The stamp lookup alone: the cheapest read that tells a missing (or another key's) job apart."""
    with reader.connect() as connection:
        try:
            repository.job_stamp(connection, job_id, owner)
        except repository.NotFound:
            raise job_not_found(job_id) from None


async def _existing_job_id(state: StateDep, job_id: JobId, caller: CallerDep) -> str:
    """Checked before the stream opens: once events flow, a 404 can no longer be sent."""
    await state.run_read(_job_exists, state.database.reader, job_id, caller.scope)
    return job_id


_EVENTS_EXAMPLE = (
    "retry: 2000\nevent: state\nid: 3\ndata: {\"id\": \"job_5f0c2a9d3e1b4c7a\", \"status\": \"running\", ...}\n\n"
    "event: progress\nid: 4\ndata: {\"id\": \"job_5f0c2a9d3e1b4c7a\", \"progress\": {\"fraction\": 0.12, ...}}\n\n"
    ": keep-alive\n\n"
)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    summary="Stream a job's state and progress (Server-Sent Events)",
    description="`event: state` when status or stage changes, `event: progress` otherwise; `data` is the job JSON. "
    "The stream ends after a terminal state.",
    responses={200: {"content": {"text/event-stream": {"example": _EVENTS_EXAMPLE}}},
               **as_json_errors({**_NOT_FOUND, **ERROR_RESPONSES})},
)
async def stream_job_events(
    request: Request, state: StateDep, job_id: Annotated[str, Depends(_existing_job_id)]
) -> AsyncIterator[ServerSentEvent]:
    async for event in job_events(request, state.event_hub, job_id):
        yield event


# Artifacts are served from the API's origin, and report.html is a page: it may show images and inline
# styles, but no script runs, nothing is fetched from elsewhere, and only the dashboard may frame it.
ARTIFACT_POLICY = (
    "default-src 'none'; script-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)
ARTIFACT_HEADERS = {"Content-Security-Policy": ARTIFACT_POLICY, "X-Content-Type-Options": "nosniff"}


@router.get(
    "/{job_id}/artifacts/{name:path}",
    response_class=FileResponse,
    summary="Download one artifact by its recorded name",
    description=f"Names come from the job's `artifacts` list, each one of {example_names()}; only recorded names are "
    f"served. Every response carries a Content-Security-Policy that forbids scripts, so `{REPORT}` opens as a "
    "static page.",
    responses={
        200: {"content": {"application/octet-stream": {"example": "<safetensors bytes>"},
                          "application/json": {"example": {"student_accuracy": 0.97, "agreement": 0.98}},
                          "image/png": {"example": "<png bytes>"},
                          "text/html": {"example": "<!DOCTYPE html>..."}}},
        404: {"model": ErrorResponse, "description": "`job_not_found` or `artifact_not_found`."},
        **ERROR_RESPONSES,
    },
)
def download_artifact(
    job_id: JobId,
    name: Annotated[str, Path(description="Artifact name, e.g. 'metrics.json' or 'heatmaps/0001.png'.")],
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    caller: CallerDep,
) -> Response:
    load_job(session, job_id, caller.scope)
    not_found = ApiError(404, "artifact_not_found", f"job '{job_id}' has no artifact named {name!r}", "name")
    if has_control_characters(name):  # no recorded name holds one, and PostgreSQL would refuse a NUL
        raise not_found
    try:
        # The name is only ever a lookup key: the file path comes from the recorded row, never from the client.
        artifact = repository.get_artifact(session, job_id, name)
    except repository.NotFound:
        raise not_found from None
    if storage.kind != "local":
        return stream_artifact(storage, settings, artifact, not_found)
    try:
        path = artifact_path(settings, artifact)
    except UnsafeArtifactPath:
        log.error("job %s: artifact %r points outside DISTILL_HOME; refused", job_id, name)
        raise not_found from None
    if not path.is_file():
        log.warning("job %s: artifact %r is recorded but its file is missing", job_id, name)
        raise not_found
    inline = artifact.content_type.startswith(("image/", "application/json", "text/"))
    return FileResponse(
        path,
        media_type=artifact.content_type,
        filename=PurePosixPath(artifact.name).name,
        content_disposition_type="inline" if inline else "attachment",
        headers=ARTIFACT_HEADERS,
    )
