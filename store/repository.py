"""Job repository: the only code that changes a job's state.

Every status change goes through `_transition`, which checks the edge against
ALLOWED_TRANSITIONS and applies it as a conditional UPDATE (WHERE status = from),
so two processes racing for the same job cannot both win.

OWNERSHIP: jobs, models and datasets carry `owner` (the fingerprint of the API key that created
them). Readers take `owner=None` for "every row" (no keys, an admin, the worker) or a fingerprint,
and a row of another owner is NotFound, exactly like a missing one.

CONTRACT (api/ and worker/ code against it):
all functions take a SQLAlchemy `Session` first and commit themselves unless
noted, returning detached-safe ORM objects (expire_on_commit=False sessions).
A function that fails rolls the session back before raising, so the session
stays usable.
"""

from __future__ import annotations

import base64
import functools
import binascii
import hashlib
import json
import logging
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, bindparam, delete, func, or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.engine import Connection, Row
from sqlalchemy.orm import Session, selectinload

from store.models import (
    TERMINAL_STATUSES,
    Artifact,
    UTCDateTime,
    DatasetRecord,
    Job,
    JobStatus,
    ModelRecord,
    WorkerRecord,
    utcnow,
)

logger = logging.getLogger(__name__)

ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    # waiting -> queued: the job it depends on (a sweep's teacher) succeeded; -> failed: that job did not.
    JobStatus.waiting: frozenset({JobStatus.queued, JobStatus.cancelled, JobStatus.failed}),
    JobStatus.queued: frozenset({JobStatus.running, JobStatus.cancelled, JobStatus.failed}),
    # running -> queued: a stale job (worker vanished) is re-queued for another attempt.
    JobStatus.running: frozenset(
        {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelling, JobStatus.queued, JobStatus.running}
    ),
    JobStatus.cancelling: frozenset({JobStatus.cancelled, JobStatus.failed, JobStatus.succeeded}),
    JobStatus.succeeded: frozenset(),
    JobStatus.failed: frozenset(),
    JobStatus.cancelled: frozenset(),
}

CLAIM_STAGE = "preparing_data"
_ACTIVE = (JobStatus.running.value, JobStatus.cancelling.value)


class IllegalTransition(Exception):
    """The job is not in a state that allows the requested change (API answers 409)."""

    def __init__(self, job_id: str, current: str, wanted: str) -> None:
        super().__init__(f"job {job_id} is {current}; cannot become {wanted}")
        self.job_id, self.current, self.wanted = job_id, current, wanted


class LeaseLost(IllegalTransition):
    """The worker no longer owns the job (it was re-queued or claimed by another worker): stop, write nothing."""

    def __init__(self, job_id: str, current: str, wanted: str, worker_id: str) -> None:
        super().__init__(job_id, current, wanted)
        self.args = (f"job {job_id} is no longer owned by worker {worker_id} (it is {current})",)
        self.worker_id = worker_id


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different body (API answers 409)."""


class NotFound(Exception):
    """No row with that id (API answers 404)."""


@dataclass
class JobError:
    code: str
    message: str
    field: str | None = None
    where: str | None = None


def new_job_id() -> str:
    return "job_" + secrets.token_hex(8)


def new_model_id() -> str:
    """Public so an upload can name its file before the row exists."""
    return "mdl_" + secrets.token_hex(8)


def new_dataset_id() -> str:
    """Public so an upload can unpack into its folder before the row exists."""
    return "ds_" + secrets.token_hex(8)


def spec_sha256(spec: dict[str, Any]) -> str:
    """Key order and whitespace do not change the digest: equal specs are equal bodies."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# The state machine
# ---------------------------------------------------------------------------------------------------------------


def _transition(
    session: Session,
    job_id: str,
    source: JobStatus,
    target: JobStatus,
    *,
    owner: str | None = None,
    where: Iterable[ColumnElement[bool]] = (),
    **values: Any,
) -> bool:
    """Move one job from `source` to `target` if, and only if, it is still in `source`.

    Raises IllegalTransition when the edge is not in ALLOWED_TRANSITIONS. Returns False when
    the row no longer matches (another process changed it first, or worker `owner` no longer owns
    it); the caller decides what a lost race means. `values` are the other columns to set. Does
    not commit.
    """
    if target not in ALLOWED_TRANSITIONS[source]:
        raise IllegalTransition(job_id, source.value, target.value)
    statement = update(Job).where(Job.id == job_id, Job.status == source.value, *where)
    if owner is not None:
        statement = statement.where(Job.worker_id == owner)
    statement = statement.values(status=target.value, version=Job.version + 1, updated_at=utcnow(), **values)
    result = session.execute(statement.execution_options(synchronize_session=False))
    won = result.rowcount == 1
    if won:
        logger.info("job %s: %s -> %s", job_id, source.value, target.value)
    return won


def _owned(column: Any, owner: str | None) -> ColumnElement[bool]:
    """The rows `owner` may see: all of them for None."""
    return column == owner if owner is not None else true()


def _load_job(session: Session, job_id: str, owner: str | None = None) -> Job:
    """A fresh read: populate_existing discards what the identity map remembers from before an UPDATE."""
    statement = (
        select(Job)
        .where(Job.id == job_id, _owned(Job.owner, owner))
        .options(selectinload(Job.artifacts))
        .execution_options(populate_existing=True)
    )
    job = session.scalars(statement).one_or_none()
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def _commit_and_load(session: Session, job_id: str) -> Job:
    session.commit()
    job = _load_job(session, job_id)
    session.commit()  # end the read transaction; the returned object stays readable
    return job


# ---------------------------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------------------------


def _find_by_key(session: Session, idempotency_key: str) -> Job | None:
    statement = (
        select(Job)
        .where(Job.idempotency_key == idempotency_key)
        .options(selectinload(Job.artifacts))
        .execution_options(populate_existing=True)
    )
    return session.scalars(statement).one_or_none()


def _replay(existing: Job, digest: str, idempotency_key: str) -> tuple[Job, bool]:
    if existing.spec_sha256 != digest:
        raise IdempotencyConflict(
            f"Idempotency-Key {idempotency_key!r} was already used for job {existing.id} with a different body"
        )
    return existing, False


def owned_idempotency_key(idempotency_key: str | None, owner: str | None) -> str | None:
    """Idempotency keys are per owner: two API keys choosing the same one get two jobs, and neither
    learns of the other's. Stored as a digest of (owner, key) when there is an owner."""
    if idempotency_key is None or owner is None:
        return idempotency_key
    return "o:" + hashlib.sha256(f"{owner}\n{idempotency_key}".encode()).hexdigest()


def create_job(
    session: Session, spec: dict[str, Any], name: str, idempotency_key: str | None = None, owner: str | None = None
) -> tuple[Job, bool]:
    """Insert a queued job owned by `owner`; returns (job, created). Same key + same spec -> (existing, False);
    same key + other spec -> IdempotencyConflict. The caller enqueues only after this returns.

    Two concurrent requests with one key cannot both insert: the unique constraint rejects the
    second, which then answers with the first one's job."""
    digest = spec_sha256(spec)
    idempotency_key = owned_idempotency_key(idempotency_key, owner)
    if idempotency_key is not None:
        existing = _find_by_key(session, idempotency_key)
        session.commit()
        if existing is not None:
            return _replay(existing, digest, idempotency_key)
    now = utcnow()
    job = Job(
        id=new_job_id(),
        name=name,
        status=JobStatus.queued.value,
        spec=spec,
        spec_sha256=digest,
        idempotency_key=idempotency_key,
        owner=owner,
        attempts=0,
        version=0,
        created_at=now,
        updated_at=now,
        artifacts=[],
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        if idempotency_key is None:
            raise
        existing = _find_by_key(session, idempotency_key)
        session.commit()
        if existing is None:  # the clash was not on the key: a real error
            raise
        return _replay(existing, digest, idempotency_key)
    logger.info("job %s: created (%s)", job.id, name)
    return job, True


def get_job(session: Session, job_id: str, owner: str | None = None) -> Job:
    """The job with its artifacts loaded; NotFound if absent or owned by another key."""
    try:
        return _load_job(session, job_id, owner)
    finally:
        session.commit()


def _encode_cursor(job: Job) -> str:
    return _encode_cursor_values(job.created_at, job.id)


def _encode_cursor_values(created_at: datetime, job_id: str) -> str:
    raw = f"{created_at.astimezone(timezone.utc).isoformat()}|{job_id}"
    return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
        created_text, job_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(created_text)
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise ValueError("malformed cursor") from error
    if created_at.tzinfo is None or not job_id:
        raise ValueError("malformed cursor")
    return created_at, job_id


def _keyset_page(statement: Any, filtered: bool, after_cursor: bool, owned: bool = False) -> Any:
    """`statement` narrowed to one page of jobs, newest first, with one extra row that tells whether a next
    page exists. Values come as bound parameters from `_page_params` (so the statement can be built once).

    The one place that knows the list order and the cursor; every listing goes through it."""
    if filtered:
        statement = statement.where(Job.status == bindparam("status"))
    if owned:
        statement = statement.where(Job.owner == bindparam("owner"))
    if after_cursor:
        created_at, job_id = bindparam("after_created_at", type_=UTCDateTime()), bindparam("after_id")
        statement = statement.where(or_(Job.created_at < created_at, and_(Job.created_at == created_at,
                                                                          Job.id < job_id)))
    return statement.order_by(Job.created_at.desc(), Job.id.desc()).limit(bindparam("page_rows"))


def _page_params(status: JobStatus | None, limit: int, cursor: str | None, owner: str | None = None
                 ) -> dict[str, Any]:
    """The parameters of `_keyset_page`; a malformed cursor or limit < 1 raises ValueError."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    params: dict[str, Any] = {"page_rows": limit + 1}
    if status is not None:
        params["status"] = JobStatus(status).value
    if cursor is not None:
        params["after_created_at"], params["after_id"] = _decode_cursor(cursor)
    if owner is not None:
        params["owner"] = owner
    return params


def list_jobs(
    session: Session, status: JobStatus | None, limit: int, cursor: str | None, owner: str | None = None
) -> tuple[list[Job], str | None]:
    """Newest first (created_at desc, id desc); returns (page, next_cursor or None). The cursor is
    opaque (base64 of created_at + id); a malformed cursor raises ValueError, as does limit < 1.

    Keyset, not offset: jobs created while a client pages never shift the pages it has not read."""
    params = _page_params(status, limit, cursor)
    statement = (
        select(Job)
        .where(_owned(Job.owner, owner))
        .options(selectinload(Job.artifacts))
        .execution_options(populate_existing=True)
    )
    rows = list(session.scalars(_keyset_page(statement, status is not None, cursor is not None), params))
    session.commit()
    page = rows[:limit]
    next_cursor = _encode_cursor(page[-1]) if len(rows) > limit else None
    return page, next_cursor


# ---------------------------------------------------------------------------------------------------------------
# Reads for pollers: SQL expressions on a plain Connection (no ORM session, no identity map, no transaction
# of their own, no commit), selecting only the columns the answer needs. A poll is the most frequent request
# the service answers; through the ORM the same read cost about 20x the query itself.
# ---------------------------------------------------------------------------------------------------------------

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
        return self._bind(compiled, _page_params(status, limit, None, owner))

    def page_from(self, rows: list[Any], limit: int) -> tuple[list[JobStamp], str | None]:
        """`list_job_stamps`' answer from the rows; only the last row's `created_at` (for the next cursor)
        goes through the column type's conversion."""
        page = rows[:limit]
        next_cursor = None
        if len(rows) > limit:
            next_cursor = _encode_cursor_values(self._created_at(page[-1][2]), page[-1][0])
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
        page_ids = _keyset_page(select(_JOBS.id, _JOBS.created_at), filtered, after_cursor, owned).subquery()
        return (
            select(_ARTIFACTS.job_id, _ARTIFACTS.name, _ARTIFACTS.size_bytes, _ARTIFACTS.content_type)
            .where(_ARTIFACTS.job_id.in_(select(page_ids.c.id)))
            .order_by(_ARTIFACTS.job_id, _ARTIFACTS.name)
        )
    columns = {"stamps": (_JOBS.id, _JOBS.version, _JOBS.created_at), "summary": JOB_SUMMARY_COLUMNS,
               "full": JOB_FULL_COLUMNS}[shape]
    return _keyset_page(select(*columns), filtered, after_cursor, owned)


def _poll_page(connection: Connection, shape: str, status: JobStatus | None, limit: int, cursor: str | None,
               owner: str | None = None) -> tuple[list[Row[Any]], str | None]:
    params = _page_params(status, limit, cursor, owner)
    statement = _poll_page_statement(shape, status is not None, cursor is not None, owner is not None)
    rows = connection.execute(statement, params).all()
    page = rows[:limit]
    next_cursor = _encode_cursor_values(page[-1].created_at, page[-1].id) if len(rows) > limit else None
    return page, next_cursor


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
        for artifact in connection.execute(statement, _page_params(status, limit, cursor, owner)):
            if artifact.job_id in artifacts:  # the subquery's extra row (the next page's first) is not shown
                artifacts[artifact.job_id].append(artifact)
    return page, artifacts, next_cursor


def claim_job(session: Session, job_id: str, worker_id: str, max_attempts: int) -> Job | None:
    """queued -> running (stage 'preparing_data'), attempts += 1, heartbeat now, started_at set once.
    Returns None when the job is not queued (duplicate delivery, cancelled, unknown id) - the caller
    does nothing. A job that would exceed max_attempts becomes failed ('too_many_attempts') instead,
    and None is returned."""
    job = session.scalars(
        select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    ).one_or_none()
    session.commit()
    if job is None:
        logger.warning("job %s: not found; nothing to claim", job_id)
        return None
    if job.status != JobStatus.queued.value:
        logger.info("job %s: is %s, not queued; claim by %s ignored", job_id, job.status, worker_id)
        return None
    now = utcnow()
    if job.attempts + 1 > max_attempts:
        failed = _transition(
            session, job_id, JobStatus.queued, JobStatus.failed,
            where=(Job.attempts == job.attempts,),
            stage=None, finished_at=now, error_code="too_many_attempts",
            error_message=f"the job was started {job.attempts} times without finishing (limit {max_attempts})",
            error_field=None, error_where="claim",
        )  # fmt: skip
        session.commit()
        if failed:
            logger.warning("job %s: failed after %d attempts", job_id, job.attempts)
        return None
    claimed = _transition(
        session, job_id, JobStatus.queued, JobStatus.running,
        where=(Job.attempts == job.attempts,),
        worker_id=worker_id, attempts=Job.attempts + 1, heartbeat_at=now, stage=CLAIM_STAGE,
        started_at=func.coalesce(Job.started_at, now),
    )  # fmt: skip
    if not claimed:
        session.rollback()
        logger.info("job %s: claim by %s lost the race", job_id, worker_id)
        return None
    return _commit_and_load(session, job_id)


def heartbeat(session: Session, job_id: str, worker_id: str, stage: str | None = None,
              progress: dict[str, Any] | None = None) -> JobStatus:
    """Refresh heartbeat_at (and stage/progress when given) if this worker owns the job;
    returns the current status so the worker sees 'cancelling'.

    Writes only while the job is running/cancelling. NotFound for an unknown id; LeaseLost when
    the job was re-queued or belongs to another worker (the caller must stop and write nothing)."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if stage is not None or progress is not None:
        # Stage and progress are what clients watch; the bare heartbeat is not news to them.
        values.update(version=Job.version + 1, updated_at=values["heartbeat_at"])
        if stage is not None:
            values["stage"] = stage
        if progress is not None:
            values["progress"] = progress
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker_id == worker_id, Job.status.in_(_ACTIVE))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    row = session.execute(select(Job.status, Job.worker_id).where(Job.id == job_id)).one_or_none()
    session.commit()
    if row is None:
        raise NotFound(f"job {job_id} not found")
    if row.worker_id != worker_id:
        raise LeaseLost(job_id, row.status, "heartbeat", worker_id)
    return JobStatus(row.status)


def completed_progress(progress: dict[str, Any] | None) -> dict[str, Any]:
    """A succeeded job's progress reads complete: progress is written throttled during steps, so the last
    write before the end can say 0.9; the API and the dashboard must both show a finished run as 1.0."""
    return {**(progress or {}), "fraction": 1.0}


def finish_job(session: Session, job_id: str, worker_id: str, status: JobStatus,
               metrics: dict[str, Any] | None = None, error: JobError | None = None) -> Job:
    """running/cancelling -> succeeded | failed | cancelled, finished_at set, stage cleared.

    IllegalTransition when the job is in another state; LeaseLost when another worker owns it."""
    target = JobStatus(status)
    if target not in TERMINAL_STATUSES:
        raise ValueError(f"finish_job needs a terminal status, not {target.value}")
    values: dict[str, Any] = {"finished_at": utcnow(), "stage": None}
    if metrics is not None:
        values["metrics"] = metrics
    if error is not None:
        values.update(
            error_code=error.code, error_message=error.message, error_field=error.field, error_where=error.where
        )
    for _ in range(5):  # a retry means the row moved under us (running -> cancelling); decide again
        job = _load_job(session, job_id)
        session.commit()
        if job.worker_id != worker_id:
            raise LeaseLost(job_id, job.status, target.value, worker_id)
        if target is JobStatus.succeeded:
            values["progress"] = completed_progress(job.progress)
        if _transition(session, job_id, JobStatus(job.status), target, owner=worker_id, **values):
            return _commit_and_load(session, job_id)
        session.rollback()
    raise IllegalTransition(job_id, job.status, target.value)


def request_cancel(session: Session, job_id: str, owner: str | None = None) -> Job:
    """queued/waiting -> cancelled at once; running -> cancelling (worker stops between steps);
    cancelling -> unchanged; terminal -> IllegalTransition. NotFound for another owner's job."""
    for _ in range(5):  # each retry means the job moved under us (e.g. claimed); re-read and decide again
        job = _load_job(session, job_id, owner)
        session.commit()
        current = JobStatus(job.status)
        if current == JobStatus.cancelling:
            return job
        if current in (JobStatus.queued, JobStatus.waiting):
            done = _transition(session, job_id, current, JobStatus.cancelled, finished_at=utcnow(), stage=None)
        elif current == JobStatus.running:
            done = _transition(session, job_id, current, JobStatus.cancelling)
        else:
            raise IllegalTransition(job_id, current.value, JobStatus.cancelled.value)
        if done:
            return _commit_and_load(session, job_id)
        session.rollback()
    raise IllegalTransition(job_id, job.status, JobStatus.cancelled.value)


def requeue_stale_jobs(session: Session, stale_before: datetime, max_attempts: int) -> list[str]:
    """Jobs running/cancelling with heartbeat older than stale_before: cancelling -> cancelled;
    running with attempts < max_attempts -> queued (returned, to be enqueued again after commit);
    otherwise -> failed with code 'worker_lost'.

    A worker that heartbeats between the read and the update keeps its job: the update is
    conditional on the heartbeat still being stale."""
    is_stale = or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before)
    rows = session.execute(
        select(Job.id, Job.status, Job.attempts).where(Job.status.in_(_ACTIVE), is_stale).order_by(Job.created_at)
    ).all()
    session.commit()
    requeued: list[str] = []
    now = utcnow()
    for job_id, status, attempts in rows:
        still_stale = (or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before), Job.attempts == attempts)
        if status == JobStatus.cancelling.value:
            _transition(session, job_id, JobStatus.cancelling, JobStatus.cancelled,
                        where=still_stale, finished_at=now, stage=None)  # fmt: skip
        elif attempts < max_attempts:
            if _transition(session, job_id, JobStatus.running, JobStatus.queued,
                           where=still_stale, worker_id=None, stage=None, heartbeat_at=None):  # fmt: skip
                requeued.append(job_id)
        else:
            _transition(
                session, job_id, JobStatus.running, JobStatus.failed, where=still_stale,
                finished_at=now, stage=None, error_code="worker_lost",
                error_message=f"the worker stopped sending heartbeats; gave up after {attempts} attempts",
                error_field=None, error_where="heartbeat",
            )  # fmt: skip
    session.commit()
    return requeued


def release_job(session: Session, job_id: str, worker_id: str) -> bool:
    """running -> queued at once for its owner, giving the attempt back: a worker asked to shut
    down (SIGTERM, a deploy) did not fail the job, so it should neither wait out the stale
    timeout nor use up one of max_attempts. The caller enqueues the job again after this commits.
    Returns False when this worker does not own a running job of that id."""
    released = _transition(
        session, job_id, JobStatus.running, JobStatus.queued, owner=worker_id,
        worker_id=None, stage=None, heartbeat_at=None, attempts=Job.attempts - 1,
    )  # fmt: skip
    session.commit()
    return released


# ---------------------------------------------------------------------------------------------------------------
# Dependencies: a sweep's children wait for its teacher job
# ---------------------------------------------------------------------------------------------------------------


def teacher_model_id(teacher_job_id: str) -> str:
    """The model a teacher job's weights are registered as: derived from the job id, so registering twice
    (the worker, then the sweeper after a crash) finds the same row."""
    return "mdl_" + teacher_job_id.removeprefix("job_")


def _register_teacher(session: Session, teacher: Job) -> str | None:
    """The succeeded teacher job's weights as an uploaded-model row (children reference it by id)."""
    model_id = teacher_model_id(teacher.id)
    if session.get(ModelRecord, model_id) is not None:
        return model_id
    artifact = next((a for a in teacher.artifacts if a.name == "teacher.safetensors"), None)
    metrics = teacher.metrics or {}
    if artifact is None or not {"num_classes", "in_channels", "weights_sha256"} <= set(metrics):
        return None
    session.add(ModelRecord(
        id=model_id, name=teacher.name, arch=teacher.spec["teacher"]["arch"],
        num_classes=int(metrics["num_classes"]), in_channels=int(metrics["in_channels"]),
        relpath=artifact.relpath, size_bytes=artifact.size_bytes, sha256=str(metrics["weights_sha256"]),
        created_at=utcnow(), owner=teacher.owner,
    ))  # fmt: skip
    return model_id


def release_dependents(session: Session, job_id: str) -> list[str]:
    """Settle the jobs waiting for `job_id` once it has ended; returns the ids now queued (the caller
    enqueues them after this commits).

    Succeeded teacher -> its weights become a model row and every waiting child gets
    `teacher.weights = <model id>` and is queued. Failed or cancelled -> the children fail
    (`teacher_failed`) or are cancelled with it. Idempotent: only `waiting` rows move."""
    dependency = _load_job(session, job_id)
    status = JobStatus(dependency.status)
    if status not in TERMINAL_STATUSES:
        session.commit()
        return []
    waiting = list(session.scalars(
        select(Job).where(Job.depends_on == job_id, Job.status == JobStatus.waiting.value)
    ))  # fmt: skip
    model_id = _register_teacher(session, dependency) if status is JobStatus.succeeded else None
    now, queued = utcnow(), []
    for child in waiting:
        if model_id is not None:
            spec = {**child.spec, "teacher": {**child.spec["teacher"], "weights": model_id}}
            if _transition(session, child.id, JobStatus.waiting, JobStatus.queued, spec=spec):
                queued.append(child.id)
        elif status is JobStatus.cancelled:
            _transition(session, child.id, JobStatus.waiting, JobStatus.cancelled, finished_at=now)
        else:
            reason = dependency.error_message or "its weights were not recorded"
            _transition(
                session, child.id, JobStatus.waiting, JobStatus.failed, finished_at=now,
                error_code="teacher_failed", error_message=f"the shared teacher job {job_id} failed: {reason}",
                error_field="teacher", error_where="waiting",
            )  # fmt: skip
    session.commit()
    if waiting:
        logger.info("job %s: %s; settled %d waiting jobs (%d queued)", job_id, status.value, len(waiting), len(queued))
    return queued


def settle_waiting(session: Session, finished_before: datetime) -> list[str]:
    """Waiting jobs whose dependency ended before `finished_before` and still holds them (its worker
    died between finishing a teacher and releasing its children): release them now. Returns the
    ids to enqueue. The grace period leaves the finishing worker time to release them itself."""
    finished = [status.value for status in TERMINAL_STATUSES]
    ended = select(Job.id).where(Job.status.in_(finished), Job.finished_at < finished_before)
    dependencies = list(session.scalars(
        select(Job.depends_on).where(Job.status == JobStatus.waiting.value, Job.depends_on.in_(ended)).distinct()
    ))  # fmt: skip
    session.commit()
    queued: list[str] = []
    for dependency in dependencies:
        queued += release_dependents(session, dependency)
    return queued


# ---------------------------------------------------------------------------------------------------------------
# Artifacts
# ---------------------------------------------------------------------------------------------------------------


def add_artifact(session: Session, job_id: str, name: str, relpath: str, content_type: str, size_bytes: int) -> Artifact:
    """Record (or replace, on a resumed attempt) one artifact of a job. NotFound for an unknown job."""
    if session.scalar(select(Job.id).where(Job.id == job_id)) is None:
        session.commit()
        raise NotFound(f"job {job_id} not found")
    values = {"relpath": relpath, "content_type": content_type, "size_bytes": size_bytes, "created_at": utcnow()}
    for _ in range(2):  # a concurrent insert of the same name turns the second try into a replace
        artifact = session.scalars(
            select(Artifact)
            .where(Artifact.job_id == job_id, Artifact.name == name)
            .execution_options(populate_existing=True)
        ).one_or_none()
        if artifact is None:
            artifact = Artifact(job_id=job_id, name=name, **values)
            session.add(artifact)
        else:
            for key, value in values.items():
                setattr(artifact, key, value)
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(version=Job.version + 1, updated_at=values["created_at"])
            .execution_options(synchronize_session=False)
        )
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            continue
        return artifact
    raise RuntimeError(f"job {job_id}: could not record artifact {name!r}")


def get_artifact(session: Session, job_id: str, name: str) -> Artifact:
    """NotFound when the job has no artifact of that exact name."""
    artifact = session.scalars(
        select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)
    ).one_or_none()
    session.commit()
    if artifact is None:
        raise NotFound(f"job {job_id} has no artifact {name!r}")
    return artifact


def count_jobs_by_status(session: Session) -> dict[str, int]:
    """Every status, zeros included, so a gauge never keeps a stale value for a status that emptied."""
    counts = {status.value: 0 for status in JobStatus}
    for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status)):
        counts[status] = count
    session.commit()
    return counts


# ---------------------------------------------------------------------------------------------------------------
# Uploaded models and datasets
# ---------------------------------------------------------------------------------------------------------------


def create_model(session: Session, record: ModelRecord) -> ModelRecord:
    """Insert; an id ('mdl_...') and created_at are filled in when missing."""
    record.id = record.id or new_model_id()
    record.created_at = record.created_at or utcnow()
    session.add(record)
    session.commit()
    logger.info("model %s: recorded (%s, %s)", record.id, record.name, record.arch)
    return record


def get_model(session: Session, model_id: str, owner: str | None = None) -> ModelRecord:
    """NotFound when absent or owned by another key."""
    record = session.get(ModelRecord, model_id)
    session.commit()
    if record is None or (owner is not None and record.owner != owner):
        raise NotFound(f"model {model_id} not found")
    return record


def list_models(session: Session, limit: int = 100, owner: str | None = None) -> list[ModelRecord]:
    """Newest first."""
    records = list(
        session.scalars(
            select(ModelRecord)
            .where(_owned(ModelRecord.owner, owner))
            .order_by(ModelRecord.created_at.desc(), ModelRecord.id.desc())
            .limit(limit)
        )
    )
    session.commit()
    return records


def create_dataset(session: Session, record: DatasetRecord) -> DatasetRecord:
    """Insert; an id ('ds_...') and created_at are filled in when missing."""
    record.id = record.id or new_dataset_id()
    record.created_at = record.created_at or utcnow()
    session.add(record)
    session.commit()
    logger.info("dataset %s: recorded (%s, %s)", record.id, record.name, record.kind)
    return record


def get_dataset(session: Session, dataset_id: str, owner: str | None = None) -> DatasetRecord:
    """NotFound when absent or owned by another key."""
    record = session.get(DatasetRecord, dataset_id)
    session.commit()
    if record is None or (owner is not None and record.owner != owner):
        raise NotFound(f"dataset {dataset_id} not found")
    return record


def list_datasets(session: Session, limit: int = 100, owner: str | None = None) -> list[DatasetRecord]:
    """Newest first."""
    records = list(
        session.scalars(
            select(DatasetRecord)
            .where(_owned(DatasetRecord.owner, owner))
            .order_by(DatasetRecord.created_at.desc(), DatasetRecord.id.desc())
            .limit(limit)
        )
    )
    session.commit()
    return records


# ---------------------------------------------------------------------------------------------------------------
# Worker presence
# ---------------------------------------------------------------------------------------------------------------


def touch_worker(session: Session, worker_id: str, hostname: str, pid: int, now: datetime | None = None) -> None:
    """Record that this worker is alive now (insert on first call, then refresh seen_at)."""
    now = now or utcnow()
    updated = session.execute(update(WorkerRecord).where(WorkerRecord.id == worker_id).values(seen_at=now))
    if updated.rowcount == 0:
        session.add(WorkerRecord(id=worker_id, hostname=hostname, pid=pid, started_at=now, seen_at=now))
        try:
            session.commit()
            return
        except IntegrityError:  # a concurrent first touch of the same id: the row exists now
            session.rollback()
            session.execute(update(WorkerRecord).where(WorkerRecord.id == worker_id).values(seen_at=now))
    session.commit()


def remove_worker(session: Session, worker_id: str) -> None:
    """A clean shutdown: the worker stops counting at once instead of after its last heartbeat ages out."""
    session.execute(delete(WorkerRecord).where(WorkerRecord.id == worker_id))
    session.commit()


def live_workers(session: Session, seen_after: datetime) -> list[WorkerRecord]:
    """Workers whose last heartbeat is newer than `seen_after`, most recent first."""
    records = list(
        session.scalars(
            select(WorkerRecord).where(WorkerRecord.seen_at > seen_after).order_by(WorkerRecord.seen_at.desc())
        )
    )
    session.commit()
    return records
