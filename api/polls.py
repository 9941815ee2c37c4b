"""The poll read path: `GET /v1/jobs/{id}` and `GET /v1/jobs`, for the documented routes and their fast path.

Dashboards poll once a second, so a poll does the least work that still answers
right: it looks up the job's version (or the page's ids and versions) first, answers
304 when `If-None-Match` names it, the cached encoded body when there is one, and
reads and encodes the row only for a version not seen before. Both the FastAPI routes
(api.routes.jobs) and their fast-path twins (api.fastpath) call `poll_job` and
`poll_page` here, so the two give the same bytes; the request rules both enforce
(id pattern, page limits) live here too.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from api.conditional import etag_matches, job_etag, json_response, not_modified, page_etag
from api.documents import DocumentCache, JobView, encode, job_document, page_body
from api.errors import ApiError
from api.state import AppState
from store import repository
from store.db import read_with_retry
from store.models import JobStatus

# The request rules of the polling routes, shared with their fast path (api.fastpath).
JOB_ID_PATTERN, JOB_ID_MAX_LENGTH = r"^[A-Za-z0-9_-]+$", 40
PAGE_MAX_LIMIT, PAGE_DEFAULT_LIMIT, CURSOR_MAX_LENGTH, IF_NONE_MATCH_MAX_LENGTH = 100, 20, 500, 2000


def job_not_found(job_id: str) -> ApiError:
    """The 404 for a missing job and for another key's job alike, so ids of others stay unconfirmed."""
    return ApiError(404, "job_not_found", f"no job with id '{job_id}'", "job_id")


def _invalid_cursor() -> ApiError:
    """A cursor is opaque: one the API did not hand out is the client's mistake (422), not a 500."""
    return ApiError(422, "invalid_cursor", "the cursor is not one this API returned", "cursor")


# --- one job --------------------------------------------------------------------------------------------


def _job_version(state: AppState, job_id: str, owner: str | None) -> int:
    """The version alone: on the calling thread's own connection where there is one (SQLite), else the pool's."""
    if state.versions is not None:
        return state.versions.version(job_id, owner)
    return read_with_retry(state.database.reader, lambda connection: repository.job_stamp(connection, job_id,
                                                                                           owner).version)


def _job_rows(connection: Connection, job_id: str, full: bool, owner: str | None) -> tuple[Any, Any]:
    """The row and (for the full view only) its artifacts, on one connection so both are read together."""
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


def _read_job_document(state: AppState, job_id: str, view: JobView, owner: str | None) -> Response:
    """The row (and artifacts) read and encoded: only when the version looked up was not cached."""
    try:
        row, artifacts = read_with_retry(state.database.reader, _job_rows, job_id, view is JobView.full, owner)
    except repository.NotFound:
        raise job_not_found(job_id) from None
    version = row[repository.JOB_VERSION_AT] or 0  # it may have moved since the lookup: the body names what it holds
    body = encode(job_document(row, view, artifacts))
    state.documents.put(job_id, version, view, body)
    return json_response(body, job_etag(job_id, version, view.value))


def read_job(state: AppState, *, job_id: str, view: JobView, if_none_match: str | None,
             owner: str | None) -> Response:
    """One primary-key lookup of the version; the row itself is read only when this version is not cached.

    Blocking: inline on SQLite, in the thread pool elsewhere (`poll_job` picks)."""
    try:
        version = _job_version(state, job_id, owner)
    except repository.NotFound:
        raise job_not_found(job_id) from None
    return (_answer_from_version(state.documents, job_id, version, view, if_none_match)
            or _read_job_document(state, job_id, view, owner))


async def poll_job(state: AppState, *, job_id: str, view: JobView, if_none_match: str | None,
                   owner: str | None) -> Response:
    """GET /v1/jobs/{id} for both its routes (FastAPI's and the fast path's).

    With PostgreSQL's async lookup (store.async_reads) the version is read on the event loop,
    with no thread: a 304 or a cached body needs nothing else. Only a version not cached yet
    reads the row, in the thread pool. Elsewhere `read_job` runs as `AppState.run_read` decides."""
    lookup = state.async_versions
    if lookup is None:
        return await state.run_read(read_job, state, job_id=job_id, view=view, if_none_match=if_none_match,
                                    owner=owner)
    try:
        version = await lookup.version(job_id, owner)
    except repository.NotFound:
        raise job_not_found(job_id) from None
    answer = _answer_from_version(state.documents, job_id, version, view, if_none_match)
    if answer is not None:
        return answer
    return await run_in_threadpool(_read_job_document, state, job_id, view, owner)


# --- a page of jobs -------------------------------------------------------------------------------------


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
    """The page on one connection: the stamps again (they may have moved), then the rows only if one is not cached."""
    full = view is JobView.full
    answer = _cached_page(cache, *repository.list_job_stamps(connection, status, limit, cursor, owner), view,
                          if_none_match)
    if answer is not None:
        return answer
    rows, artifacts, next_cursor = repository.list_job_rows(connection, status, limit, cursor, full=full, owner=owner)
    found = artifacts or {}
    items = []
    for row in rows:
        job_id, version = row[repository.JOB_ID_AT], row[repository.JOB_VERSION_AT] or 0
        body = encode(job_document(row, view, found.get(job_id, ()) if full else None))
        cache.put(job_id, version, view, body)
        items.append(body)
    etag = page_etag([(row[repository.JOB_ID_AT], row[repository.JOB_VERSION_AT] or 0) for row in rows],
                     next_cursor, view.value)
    return json_response(page_body(items, next_cursor), etag)


def _read_page_rows(state: AppState, status: JobStatus | None, limit: int, cursor: str | None, view: JobView,
                    if_none_match: str | None, owner: str | None) -> Response:
    """The page through SQLAlchemy (stamps again, then rows for what is not cached): any page, any backend."""
    try:
        return read_with_retry(state.database.reader, _page_on, state.documents, status, limit, cursor, view,
                               if_none_match, owner)
    except ValueError:
        raise _invalid_cursor() from None


def read_page(state: AppState, *, status: JobStatus | None, limit: int, cursor: str | None, view: JobView,
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


async def poll_page(state: AppState, *, status: JobStatus | None, limit: int, cursor: str | None, view: JobView,
                    if_none_match: str | None, owner: str | None) -> Response:
    """GET /v1/jobs for both its routes: a first page's stamps on the event loop where the async lookup
    runs (PostgreSQL), as `poll_job` does; the rest, and every later page, as `read_page`."""
    lookup = state.async_versions
    if lookup is None:
        return await state.run_read(read_page, state, status=status, limit=limit, cursor=cursor, view=view,
                                    if_none_match=if_none_match, owner=owner)
    try:
        first = await lookup.page_stamps(status, limit, cursor, owner)
    except ValueError:
        raise _invalid_cursor() from None
    answer = _cached_page(state.documents, *first, view, if_none_match) if first is not None else None
    if answer is not None:
        return answer
    return await run_in_threadpool(_read_page_rows, state, status, limit, cursor, view, if_none_match, owner)
