"""Jobs: create (validated, committed, then enqueued), list, read, cancel, stream events, download artifacts."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.responses import FileResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.conditional import etag_matches, job_etag, json_response, not_modified, page_etag
from api.deps import CallerDep, CeleryDep, SessionDep, SettingsDep, StorageDep, run_read, run_read_on
from api.documents import DocumentCache, JobView, encode, job_document, page_body
from api.downloads import stream_artifact
from api.errors import ApiError
from api.events import EventHub, job_events
from api.routes import API_V1
from api.ratelimit import rate_limit
from api.schemas import ERROR_RESPONSES, WRITE_ERROR_RESPONSES, JOB_SPEC_EXAMPLES, ErrorResponse, JobOut, JobPage, as_json_errors
from core.models.compat import DatasetShape, WeightsShape, fit_problems
from core.spec import JobSpec, control_character_field, has_control_characters
from store import repository
from store.artifacts import UnsafeArtifactPath, artifact_path
from store.models import Job, JobStatus
from store.repository import JOB_ID_AT, JOB_VERSION_AT
from store.queue import enqueue_job
from store.db import read_with_retry
from store.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(prefix=f"{API_V1}/jobs", tags=["jobs"])

# scikit-learn's digits: 10 classes of 8x8 grey images (core.data reads it the same way).
DIGITS_NUM_CLASSES, DIGITS_IN_CHANNELS = 10, 1

# The request rules of the polling routes, shared with their fast path (api.fastpath).
JOB_ID_PATTERN, JOB_ID_MAX_LENGTH = r"^[A-Za-z0-9_-]+$", 40
PAGE_MAX_LIMIT, PAGE_DEFAULT_LIMIT, CURSOR_MAX_LENGTH, IF_NONE_MATCH_MAX_LENGTH = 100, 20, 500, 2000

JobId = Annotated[str, Path(min_length=1, max_length=JOB_ID_MAX_LENGTH, pattern=JOB_ID_PATTERN,
                            description="Job id, e.g. 'job_5f0c2a9d3e1b4c7a'.")]
_NOT_FOUND = {404: {"model": ErrorResponse, "description": "No job with that id (`job_not_found`)."}}


def _job_not_found(job_id: str) -> ApiError:
    return ApiError(404, "job_not_found", f"no job with id '{job_id}'", "job_id")


def load_job(session: Session, job_id: str, owner: str | None) -> Job:
    """The job if `owner` may see it (None: any job); another key's job is a 404 like a missing one."""
    try:
        return repository.get_job(session, job_id, owner)
    except repository.NotFound:
        raise _job_not_found(job_id) from None


def _dataset_shape(
    spec: JobSpec, session: Session, settings: Settings, owner: str | None
) -> tuple[int | None, int | None]:
    """(num_classes, in_channels) of the spec's dataset where the server knows them; 422 if it does not exist."""
    dataset = spec.dataset
    if dataset.path is not None:
        raise ApiError(422, "path_not_allowed", "the API never reads server paths sent by a client: upload the data "
                       "with POST /v1/datasets and pass its id as dataset.id", "dataset.path")
    if dataset.name is not None:
        if dataset.name == "digits":
            return DIGITS_NUM_CLASSES, DIGITS_IN_CHANNELS
        if dataset.name in settings.dataset_roots:
            return None, None
        known = ", ".join(sorted({"digits", *settings.dataset_roots}))
        raise ApiError(422, "unknown_dataset", f"unknown dataset '{dataset.name}'; known: {known}", "dataset.name")
    assert dataset.id is not None  # JobSpec guarantees exactly one source
    try:
        record = repository.get_dataset(session, dataset.id, owner)
    except repository.NotFound:
        raise ApiError(422, "unknown_dataset", f"no uploaded dataset with id '{dataset.id}'", "dataset.id") from None
    return record.num_classes, record.in_channels


def check_spec_against_server(spec: JobSpec, session: Session, settings: Settings, owner: str | None) -> None:
    """What JobSpec cannot know alone: the dataset and the teacher weights exist here, belong to the
    caller (`owner`; None: anyone's) and fit each other."""
    num_classes, in_channels = _dataset_shape(spec, session, settings, owner)
    model_id = spec.teacher.weights
    if model_id is None:
        return
    try:
        model = repository.get_model(session, model_id, owner)
    except repository.NotFound:
        raise ApiError(422, "unknown_model", f"no uploaded model with id '{model_id}' (upload weights with "
                       "POST /v1/models)", "teacher.weights") from None
    problems = fit_problems(WeightsShape(model.arch, model.num_classes, model.in_channels),
                            arch=spec.teacher.arch, dataset=DatasetShape(num_classes, in_channels))
    if problems:
        raise ApiError(422, "invalid_spec", f"model '{model_id}' does not fit this job: {'; '.join(problems)}",
                       "teacher.weights")


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    dependencies=[Depends(rate_limit)],
    summary="Submit a distillation job",
    responses={
        200: {"model": JobOut, "description": "Replay: the Idempotency-Key was seen with this same body."},
        409: {"model": ErrorResponse, "description": "Idempotency-Key reused with another body."},
        **WRITE_ERROR_RESPONSES,
    },
)
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
    document = spec.model_dump(mode="json")
    if (field := control_character_field(document)) is not None:
        raise ApiError(422, "validation_error", f"{field}: text must not contain control characters", field)
    check_spec_against_server(spec, session, settings, caller.scope)
    job, created = repository.create_job(session, document, spec.name, idempotency_key, owner=caller.owner)
    if not created:
        log.info("job %s: replayed for Idempotency-Key %r; not enqueued again", job.id, idempotency_key)
        response = _job_response(job)
        response.headers["Idempotent-Replayed"] = "true"
        return response
    try:
        enqueue_job(job.id, celery)
    except Exception:
        # The row is committed and stays queued: the worker's sweeper re-enqueues queued jobs left untouched
        # past the stale timeout, so the client still gets its job (201) instead of an error it would retry.
        log.exception("job %s: committed but could not be enqueued; the sweeper will re-send it", job.id)
    else:
        log.info("job %s: enqueued", job.id)
    return _job_response(job, status_code=201)


ViewQuery = Annotated[JobView, Query(description="`full` (default): the whole job, with spec, artifacts and the "
                                     "per-epoch `metrics.history`. `summary`: state, stage, progress, error, times "
                                     "and metrics without `history`; no spec, no artifacts. For pollers.")]
IfNoneMatch = Annotated[str | None, Header(alias="If-None-Match", max_length=IF_NONE_MATCH_MAX_LENGTH,
                                           description="An `ETag` from an earlier answer: 304 while it is current.")]
_CONDITIONAL = {304: {"description": "Not Modified: the `If-None-Match` ETag is current (no body)."}}


def _job_response(job: Job, view: JobView = JobView.full, status_code: int = 200) -> Response:
    etag = job_etag(job.id, job.version or 0, view.value)
    return json_response(encode(job_document(job, view)), etag, status_code)


def _job_version(state: Any, job_id: str, owner: str | None) -> int:
    """The version alone: on the calling thread's own connection where there is one (SQLite), else the pool's."""
    if state.versions is not None:
        return state.versions.version(job_id, owner)
    return read_with_retry(state.database.reader, lambda connection: repository.job_stamp(connection, job_id,
                                                                                           owner).version)


def _job_rows(connection: Connection, job_id: str, full: bool, owner: str | None) -> tuple[Any, Any]:
    row = repository.read_job_row(connection, job_id, full=full, owner=owner)
    return row, (repository.read_artifact_rows(connection, job_id) if full else None)


def _answer_from_version(cache: DocumentCache, job_id: str, version: int, view: JobView,
                         if_none_match: str | None) -> Response | None:
    """304 when `If-None-Match` names this version, the cached body when there is one, else None."""
    etag = job_etag(job_id, version, view.value)
    if etag_matches(if_none_match, etag):
        return not_modified(etag)
    body = cache.get(job_id, version, view)
    return json_response(body, etag) if body is not None else None


def _read_job_document(state: Any, job_id: str, view: JobView, owner: str | None) -> Response:
    """The row (and artifacts) read and encoded: only when the version looked up was not cached."""
    try:
        row, artifacts = read_with_retry(state.database.reader, _job_rows, job_id, view is JobView.full, owner)
    except repository.NotFound:
        raise _job_not_found(job_id) from None
    version = row[JOB_VERSION_AT] or 0  # it may have moved since the lookup: the body names what it holds
    body = encode(job_document(row, view, artifacts))
    state.documents.put(job_id, version, view, body)
    return json_response(body, job_etag(job_id, version, view.value))


def read_job(state: Any, job_id: str, view: JobView, if_none_match: str | None, owner: str | None) -> Response:
    """One primary-key lookup of the version; the row itself is read only when this version is not cached.

    `state` is the app's state (its database, document cache and version lookup). Blocking:
    inline on SQLite, in the thread pool elsewhere (`poll_job` picks)."""
    try:
        version = _job_version(state, job_id, owner)
    except repository.NotFound:
        raise _job_not_found(job_id) from None
    return (_answer_from_version(state.documents, job_id, version, view, if_none_match)
            or _read_job_document(state, job_id, view, owner))


async def poll_job(state: Any, job_id: str, view: JobView, if_none_match: str | None, owner: str | None
                   ) -> Response:
    """GET /v1/jobs/{id} for both its routes (FastAPI's and the fast path's).

    With PostgreSQL's async lookup (store.async_reads) the version is read on the event loop,
    with no thread: a 304 or a cached body needs nothing else. Only a version not cached yet
    reads the row, in the thread pool. Elsewhere `read_job` runs as `run_read_on` decides."""
    lookup = state.async_versions
    if lookup is None:
        return await run_read_on(state, read_job, state, job_id, view, if_none_match, owner)
    try:
        version = await lookup.version(job_id, owner)
    except repository.NotFound:
        raise _job_not_found(job_id) from None
    answer = _answer_from_version(state.documents, job_id, version, view, if_none_match)
    if answer is not None:
        return answer
    return await run_in_threadpool(_read_job_document, state, job_id, view, owner)


def _cached_page(cache: DocumentCache, stamps: list[repository.JobStamp], next_cursor: str | None, view: JobView,
                 if_none_match: str | None) -> Response | None:
    """304 when the page is unchanged, its cached documents when every version is cached, else None."""
    etag = page_etag([(stamp.id, stamp.version) for stamp in stamps], next_cursor, view.value)
    if etag_matches(if_none_match, etag):
        return not_modified(etag)
    cached = [cache.get(stamp.id, stamp.version, view) for stamp in stamps]
    if all(body is not None for body in cached):
        return json_response(page_body(cached, next_cursor), etag)  # type: ignore[arg-type]
    return None


def _page_on(connection: Connection, cache: DocumentCache, status: JobStatus | None, limit: int,
             cursor: str | None, view: JobView, if_none_match: str | None, owner: str | None) -> Response:
    full = view is JobView.full
    answer = _cached_page(cache, *repository.list_job_stamps(connection, status, limit, cursor, owner), view,
                          if_none_match)
    if answer is not None:
        return answer
    rows, artifacts, next_cursor = repository.list_job_rows(connection, status, limit, cursor, full=full, owner=owner)
    found = artifacts or {}
    items = []
    for row in rows:
        body = encode(job_document(row, view, found.get(row[JOB_ID_AT], ()) if full else None))
        cache.put(row[JOB_ID_AT], row[JOB_VERSION_AT] or 0, view, body)
        items.append(body)
    etag = page_etag([(row[JOB_ID_AT], row[JOB_VERSION_AT] or 0) for row in rows], next_cursor, view.value)
    return json_response(page_body(items, next_cursor), etag)


def _invalid_cursor() -> ApiError:
    return ApiError(422, "invalid_cursor", "the cursor is not one this API returned", "cursor")


def _read_page_rows(state: Any, status: JobStatus | None, limit: int, cursor: str | None, view: JobView,
                    if_none_match: str | None, owner: str | None) -> Response:
    """The page through SQLAlchemy (stamps again, then rows for what is not cached): any page, any backend."""
    try:
        return read_with_retry(state.database.reader, _page_on, state.documents, status, limit, cursor, view,
                               if_none_match, owner)
    except ValueError:
        raise _invalid_cursor() from None


def read_page(state: Any, status: JobStatus | None, limit: int, cursor: str | None, view: JobView,
              if_none_match: str | None, owner: str | None) -> Response:
    """(id, version) of the page first: 304 when unchanged, cached items when every version is cached.

    A first page's stamps come from the thread's own connection where there is one (SQLite).
    Blocking, like `read_job`."""
    try:
        first = state.versions.page_stamps(status, limit, cursor, owner) if state.versions is not None else None
    except ValueError:
        raise _invalid_cursor() from None
    answer = _cached_page(state.documents, *first, view, if_none_match) if first is not None else None
    return answer or _read_page_rows(state, status, limit, cursor, view, if_none_match, owner)


async def poll_page(state: Any, status: JobStatus | None, limit: int, cursor: str | None, view: JobView,
                    if_none_match: str | None, owner: str | None) -> Response:
    """GET /v1/jobs for both its routes: a first page's stamps on the event loop where the async lookup
    runs (PostgreSQL), as `poll_job` does; the rest, and every later page, as `read_page`."""
    lookup = state.async_versions
    if lookup is None:
        return await run_read_on(state, read_page, state, status, limit, cursor, view, if_none_match, owner)
    try:
        first = await lookup.page_stamps(status, limit, cursor, owner)
    except ValueError:
        raise _invalid_cursor() from None
    answer = _cached_page(state.documents, *first, view, if_none_match) if first is not None else None
    if answer is not None:
        return answer
    return await run_in_threadpool(_read_page_rows, state, status, limit, cursor, view, if_none_match, owner)


@router.get("", summary="List jobs, newest first", response_model=JobPage,
            responses={**_CONDITIONAL, **ERROR_RESPONSES})
async def list_jobs(
    request: Request,
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
    return await poll_page(request.app.state, status, limit, cursor, view, if_none_match, caller.scope)


@router.get("/{job_id}", summary="A job's state, progress, metrics, error and artifacts", response_model=JobOut,
            responses={**_CONDITIONAL, **_NOT_FOUND, **ERROR_RESPONSES})
async def get_job(request: Request, job_id: JobId, caller: CallerDep, view: ViewQuery = JobView.full,
                  if_none_match: IfNoneMatch = None) -> Response:
    """`ETag` is the job's version: poll with `If-None-Match` and get 304 (no body) until the job changes."""
    return await poll_job(request.app.state, job_id, view, if_none_match, caller.scope)


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobOut,
    dependencies=[Depends(rate_limit)],
    summary="Cancel a job",
    description="A queued job is cancelled at once; a running one becomes `cancelling` and stops at its next step.",
    responses={**_NOT_FOUND, 409: {"model": ErrorResponse, "description": "The job already ended (`job_finished`)."},
               **WRITE_ERROR_RESPONSES},
)
def cancel_job(job_id: JobId, session: SessionDep, caller: CallerDep) -> Response:
    try:
        job = repository.request_cancel(session, job_id, caller.scope)  # IllegalTransition -> 409 job_finished
    except repository.NotFound:
        raise _job_not_found(job_id) from None
    log.info("job %s: cancel requested; now %s", job_id, job.status)
    return _job_response(job, status_code=202)


def _job_exists(reader: Engine, job_id: str, owner: str | None) -> None:
    with reader.connect() as connection:
        try:
            repository.job_stamp(connection, job_id, owner)
        except repository.NotFound:
            raise _job_not_found(job_id) from None


async def _existing_job_id(request: Request, job_id: JobId, caller: CallerDep) -> str:
    """Checked before the stream opens: once events flow, a 404 can no longer be sent."""
    await run_read(request, _job_exists, request.app.state.database.reader, job_id, caller.scope)
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
    request: Request, job_id: Annotated[str, Depends(_existing_job_id)]
) -> AsyncIterator[ServerSentEvent]:
    hub: EventHub = request.app.state.event_hub
    async for event in job_events(request, hub, job_id):
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
    description="Names come from the job's `artifacts` list (e.g. `student.safetensors`, `student.onnx`, "
    "`report.html`, `README.md`, `heatmaps/0003.png`); only recorded names are served. Every response carries a "
    "Content-Security-Policy that forbids scripts, so `report.html` opens as a static page.",
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
