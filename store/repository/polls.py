"""Reads for pollers: SQL expressions on a plain Connection, selecting only the columns the answer needs.

No ORM session, no identity map, no transaction of their own, no commit. A poll is the most frequent
request the service answers; through the ORM the same read cost about 20x the query itself. The
listings page exactly as `list_jobs` does: they reuse its statement builder and cursor.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, bindparam, select
from sqlalchemy.engine import Connection, Row

from store.models import Artifact, Job, JobStatus
from store.repository.errors import NotFound
from store.repository.jobs import job_page, job_page_params
from store.repository.paging import cut_page


# Plain table columns, not ORM attributes: the ORM's annotated columns make SQLAlchemy re-match every result
# column against its cached statement on each execution, which alone cost more than the query.
_JOBS, _ARTIFACTS = Job.__table__.c, Artifact.__table__.c
# What a job document shows, in the order it shows it; `spec` only in the full view.
JOB_SUMMARY_COLUMNS = (
    _JOBS.id, _JOBS.name, _JOBS.status, _JOBS.stage, _JOBS.progress, _JOBS.metrics, _JOBS.error_code,
    _JOBS.error_message, _JOBS.error_field, _JOBS.error_where, _JOBS.attempts, _JOBS.created_at, _JOBS.started_at,
    _JOBS.finished_at, _JOBS.version,
)
JOB_FULL_COLUMNS = (*JOB_SUMMARY_COLUMNS, _JOBS.spec)
JOB_ID_AT, JOB_VERSION_AT = 0, 14  # positions in both tuples: read rows by position, which is 10x cheaper
assert JOB_SUMMARY_COLUMNS[JOB_ID_AT] is _JOBS.id and JOB_SUMMARY_COLUMNS[JOB_VERSION_AT] is _JOBS.version
# Built once: a statement object reused with new parameters skips building and cache-key work per call.
_STAMP_BY_ID = select(_JOBS.version).where(_JOBS.id == bindparam("job_id"))
_SUMMARY_BY_ID = select(*JOB_SUMMARY_COLUMNS).where(_JOBS.id == bindparam("job_id"))
_FULL_BY_ID = select(*JOB_FULL_COLUMNS).where(_JOBS.id == bindparam("job_id"))
# The same reads limited to one owner (API keys on): another key's job reads as missing.
_OWNED = _JOBS.owner == bindparam("owner")
_BY_ID_OWNED = {
    "stamp": _STAMP_BY_ID.where(_OWNED), "summary": _SUMMARY_BY_ID.where(_OWNED), "full": _FULL_BY_ID.where(_OWNED)
}
_ARTIFACTS_BY_JOB = (
    select(_ARTIFACTS.job_id, _ARTIFACTS.name, _ARTIFACTS.size_bytes, _ARTIFACTS.content_type)
    .where(_ARTIFACTS.job_id == bindparam("job_id"))
    .order_by(_ARTIFACTS.name)
)


@dataclass(frozen=True)
class JobStamp:
    """Which row and how often it changed: enough to answer a conditional GET without the row."""

    id: str
    version: int


def _by_id(shape: str, job_id: str, owner: str | None) -> tuple[Any, dict[str, Any]]:
    plain = {"stamp": _STAMP_BY_ID, "summary": _SUMMARY_BY_ID, "full": _FULL_BY_ID}[shape]
    if owner is None:
        return plain, {"job_id": job_id}
    return _BY_ID_OWNED[shape], {"job_id": job_id, "owner": owner}


def job_stamp(connection: Connection, job_id: str, owner: str | None = None) -> JobStamp:
    """The job's version alone (one primary-key lookup); NotFound if absent or another owner's."""
    version = connection.execute(*_by_id("stamp", job_id, owner)).scalar()
    if version is None:
        raise NotFound(f"job {job_id} not found")
    return JobStamp(job_id, version)


# (driver SQL, parameter names in order for a positional driver, the statement's own values)
Compiled = tuple[str, tuple[str, ...] | None, dict[str, Any]]


class PollStatements:
    """The polls' driver SQL for one dialect, and how its rows become answers.

    Every poll starts with a one-column primary-key read of the job's version (or a first
    page's (id, version) stamps), and most end with it (a 304 or a cached body). Through
    SQLAlchemy's pool checkout and execution context that read costs several times the query
    itself, so it also runs as driver SQL: the same `_STAMP_BY_ID` and `_poll_page_statement`,
    compiled once for the dialect (never written twice). `VersionLookup` runs it on SQLite's
    DBAPI connection, `store.async_reads` on psycopg's async connections (PostgreSQL).
    """

    def __init__(self, dialect: Any) -> None:
        self.dialect = dialect
        self._by_owner = {owned: self._compile(statement) for owned, statement in
                          ((False, _STAMP_BY_ID), (True, _BY_ID_OWNED["stamp"]))}
        self._pages: dict[tuple[bool, bool], Compiled] = {}
        column_type = _JOBS.created_at.type.dialect_impl(dialect)  # with the driver's own conversion
        self._created_at = column_type.result_processor(dialect, None) or (lambda value: value)

    def _compile(self, statement: Any) -> Compiled:
        """Driver SQL, the parameter names in order (positional drivers), and the statement's own values
        (SQLite renders LIMIT with an OFFSET parameter of its own)."""
        compiled = statement.compile(dialect=self.dialect)
        names = tuple(compiled.positiontup or ()) if self.dialect.positional else None
        return compiled.string, names, {k: v for k, v in compiled.params.items() if v is not None}

    @staticmethod
    def _bind(compiled: Compiled, values: dict[str, Any]) -> tuple[str, Any]:
        sql, names, defaults = compiled
        values = {**defaults, **values}
        return sql, (tuple(values[name] for name in names) if names is not None else values)

    def version_query(self, job_id: str, owner: str | None) -> tuple[str, Any]:
        """(sql, parameters) of the job's version lookup."""
        return self._bind(self._by_owner[owner is not None], {"job_id": job_id, "owner": owner})

    @staticmethod
    def version_from(row: Any, job_id: str) -> int:
        """The version in the lookup's row; NotFound if there was none (absent or another owner's)."""
        if row is None:
            raise NotFound(f"job {job_id} not found")
        return row[0]

    def first_page_query(self, status: JobStatus | None, limit: int, owner: str | None) -> tuple[str, Any]:
        """(sql, parameters) of a first page's stamps (no cursor: what a dashboard polls).

        A later page binds a datetime, which SQLAlchemy's type conversion must prepare; the
        first page binds only strings and numbers."""
        key = (status is not None, owner is not None)
        compiled = self._pages.get(key)
        if compiled is None:
            compiled = self._pages[key] = self._compile(_poll_page_statement("stamps", key[0], False, key[1]))
        return self._bind(compiled, job_page_params(status, limit, None, owner))

    def page_from(self, rows: list[Any], limit: int) -> tuple[list[JobStamp], str | None]:
        """`list_job_stamps`' answer from the rows; only the last row's `created_at` (for the next cursor)
        goes through the column type's conversion."""
        page, next_cursor = cut_page(rows, limit, lambda row: (self._created_at(row[2]), row[0]))
        return [JobStamp(job_id, version) for job_id, version, _ in page], next_cursor


class VersionLookup(PollStatements):
    """`PollStatements` on one DBAPI connection per thread: for SQLite, whose reads run inline on the loop.

    On SQLite the query itself costs about 0.07 ms, but checking a Connection out of the pool
    and through SQLAlchemy's execution context cost five times that. Each thread that calls
    it keeps a connection of its own, taken out of the pool for good and closed by `close()`.
    SQLite runs a SELECT outside any transaction, so each lookup sees the latest commit.
    """

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine.dialect)
        self.engine = engine
        self._local = threading.local()
        self._held: list[Any] = []
        self._lock = threading.Lock()
        self._generation = 0

    def _cursor(self) -> Any:
        generation, cursor = getattr(self._local, "cursor", (None, None))
        if generation != self._generation:  # first use on this thread, or since close()
            connection = self.engine.raw_connection()
            connection.detach()  # this thread's own from now on: never handed to another thread by the pool
            with self._lock:
                self._held.append(connection)
            cursor = connection.dbapi_connection.cursor()
            self._local.cursor = (self._generation, cursor)
        return cursor

    def version(self, job_id: str, owner: str | None = None) -> int:
        """The job's version; NotFound if absent or another owner's."""
        cursor = self._cursor()
        cursor.execute(*self.version_query(job_id, owner))
        return self.version_from(cursor.fetchone(), job_id)

    def page_stamps(self, status: JobStatus | None, limit: int, cursor: str | None, owner: str | None = None
                    ) -> tuple[list[JobStamp], str | None] | None:
        """`list_job_stamps` of a first page, or None for a later page (see `first_page_query`)."""
        if cursor is not None:
            return None
        driver_cursor = self._cursor()
        driver_cursor.execute(*self.first_page_query(status, limit, owner))
        return self.page_from(driver_cursor.fetchall(), limit)

    def close(self) -> None:
        """Close every thread's connection; a later lookup opens a new one (an app may start again)."""
        with self._lock:
            held, self._held = self._held, []
            self._generation += 1
        for connection in held:
            connection.close()


def read_job_row(connection: Connection, job_id: str, *, full: bool = True, owner: str | None = None) -> Row[Any]:
    """The job's displayed columns (`spec` too when `full`); NotFound if absent or another owner's."""
    row = connection.execute(*_by_id("full" if full else "summary", job_id, owner)).one_or_none()
    if row is None:
        raise NotFound(f"job {job_id} not found")
    return row


def read_artifact_rows(connection: Connection, job_id: str) -> list[Row[Any]]:
    """The job's artifacts (job_id, name, size_bytes, content_type), ordered by name."""
    return list(connection.execute(_ARTIFACTS_BY_JOB, {"job_id": job_id}))


@functools.cache
def _poll_page_statement(shape: str, filtered: bool, after_cursor: bool, owned: bool = False) -> Any:
    """A listing's statement, built once per shape: `stamps`, `summary`, `full` or `artifacts` (of the page)."""
    if shape == "artifacts":
        page_ids = job_page(select(_JOBS.id, _JOBS.created_at), filtered, after_cursor, owned).subquery()
        return (
            select(_ARTIFACTS.job_id, _ARTIFACTS.name, _ARTIFACTS.size_bytes, _ARTIFACTS.content_type)
            .where(_ARTIFACTS.job_id.in_(select(page_ids.c.id)))
            .order_by(_ARTIFACTS.job_id, _ARTIFACTS.name)
        )
    columns = {"stamps": (_JOBS.id, _JOBS.version, _JOBS.created_at), "summary": JOB_SUMMARY_COLUMNS,
               "full": JOB_FULL_COLUMNS}[shape]
    return job_page(select(*columns), filtered, after_cursor, owned)


def _poll_page(connection: Connection, shape: str, status: JobStatus | None, limit: int, cursor: str | None,
               owner: str | None = None) -> tuple[list[Row[Any]], str | None]:
    params = job_page_params(status, limit, cursor, owner)
    statement = _poll_page_statement(shape, status is not None, cursor is not None, owner is not None)
    rows = connection.execute(statement, params).all()
    return cut_page(rows, limit, lambda row: (row.created_at, row.id))


def list_job_stamps(connection: Connection, status: JobStatus | None, limit: int, cursor: str | None,
                    owner: str | None = None) -> tuple[list[JobStamp], str | None]:
    """The page `list_jobs` would return, as (id, version) only, and its next cursor."""
    page, next_cursor = _poll_page(connection, "stamps", status, limit, cursor, owner)
    return [JobStamp(row.id, row.version) for row in page], next_cursor


def list_job_rows(connection: Connection, status: JobStatus | None, limit: int, cursor: str | None, *,
                  full: bool = True, owner: str | None = None
                  ) -> tuple[list[Row[Any]], dict[str, list[Row[Any]]] | None, str | None]:
    """The page `list_jobs` would return as display rows, its artifacts by job id (full only), the next cursor."""
    page, next_cursor = _poll_page(connection, "full" if full else "summary", status, limit, cursor, owner)
    if not full:
        return page, None, next_cursor
    artifacts: dict[str, list[Row[Any]]] = {row.id: [] for row in page}
    if page:
        # The same page as a subquery: no IN list of ids to render (20 bound ids cost more than the query).
        statement = _poll_page_statement("artifacts", status is not None, cursor is not None, owner is not None)
        for artifact in connection.execute(statement, job_page_params(status, limit, cursor, owner)):
            if artifact.job_id in artifacts:  # the subquery's extra row (the next page's first) is not shown
                artifacts[artifact.job_id].append(artifact)
    return page, artifacts, next_cursor
