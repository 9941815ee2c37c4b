"""Job records through the ORM session: create (idempotently), read one, list a page, count by status.

These are the reads that need whole objects (a job with its artifacts, right after a write); the
polls that need only a few columns read through `store.repository.polls` instead. Every listing of
jobs, ORM or not, is built by `job_page` and `job_page_params`, the one place that knows the
jobs' list order, filters and cursor.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session, selectinload

from store.models import Job, JobStatus, UTCDateTime, utcnow
from store.repository.idempotency import KeyedRows, create_once, request_digest
from store.repository.ids import new_job_id
from store.repository.ownership import owned, owned_idempotency_key
from store.repository.paging import check_limit, cut_page, decode_cursor, newest_first
from store.repository.states import load_job

logger = logging.getLogger(__name__)

_JOBS_BY_KEY: KeyedRows[Job] = KeyedRows(
    lookup=select(Job)
    .where(Job.idempotency_key == bindparam("key"))
    .options(selectinload(Job.artifacts))
    .execution_options(populate_existing=True),
    digest_of=lambda job: job.request_digest,
    conflict="Idempotency-Key {key!r} was already used for job {id} with a different body",
)


def create_job(
    session: Session, spec: dict[str, Any], name: str, idempotency_key: str | None = None, owner: str | None = None
) -> tuple[Job, bool]:
    """Insert a queued job owned by `owner`; returns (job, created). Same key + same spec -> (existing, False);
    same key + other spec -> IdempotencyConflict. The caller enqueues only after this returns.

    Two concurrent requests with one key cannot both insert: the unique constraint rejects the
    second, which then answers with the first one's job."""
    digest = request_digest(spec)
    key = owned_idempotency_key(idempotency_key, owner)

    def insert() -> Job:
        now = utcnow()
        job = Job(
            id=new_job_id(), name=name, status=JobStatus.queued.value, spec=spec, request_digest=digest,
            idempotency_key=key, owner=owner, attempts=0, version=0, created_at=now, updated_at=now, artifacts=[],
        )  # fmt: skip
        session.add(job)
        return job

    job, created = create_once(session, _JOBS_BY_KEY, key, digest, insert)
    if created:
        logger.info("job %s: created (%s)", job.id, name)
    return job, created


def get_job(session: Session, job_id: str, owner: str | None = None) -> Job:
    """The job with its artifacts loaded; NotFound if absent or owned by another key."""
    try:
        return load_job(session, job_id, owner)
    finally:
        session.commit()


def job_page(statement: Any, filtered: bool, after_cursor: bool, by_owner: bool = False) -> Any:
    """`statement` narrowed to one page of jobs, newest first, with one extra row that tells whether a next
    page exists. Values come as bound parameters from `job_page_params`, so a statement of each shape
    can be built once and reused (the polls cache theirs)."""
    if filtered:
        statement = statement.where(Job.status == bindparam("status"))
    if by_owner:
        statement = statement.where(Job.owner == bindparam("owner"))
    after = (bindparam("after_created_at", type_=UTCDateTime()), bindparam("after_id")) if after_cursor else None
    return newest_first(statement, Job.created_at, Job.id, after).limit(bindparam("page_rows"))


def job_page_params(status: JobStatus | None, limit: int, cursor: str | None, owner: str | None = None
                    ) -> dict[str, Any]:
    """The parameters of `job_page`; a malformed cursor or limit < 1 raises ValueError."""
    check_limit(limit)
    params: dict[str, Any] = {"page_rows": limit + 1}
    if status is not None:
        params["status"] = JobStatus(status).value
    if cursor is not None:
        params["after_created_at"], params["after_id"] = decode_cursor(cursor)
    if owner is not None:
        params["owner"] = owner
    return params


def list_jobs(
    session: Session, status: JobStatus | None, limit: int, cursor: str | None, owner: str | None = None
) -> tuple[list[Job], str | None]:
    """Newest first (created_at desc, id desc); returns (page, next_cursor or None). The cursor is
    opaque (base64 of created_at + id); a malformed cursor raises ValueError, as does limit < 1.

    Keyset, not offset: jobs created while a client pages never shift the pages it has not read."""
    params = job_page_params(status, limit, cursor)
    statement = (
        select(Job)
        .where(owned(Job.owner, owner))
        .options(selectinload(Job.artifacts))
        .execution_options(populate_existing=True)
    )
    rows = list(session.scalars(job_page(statement, status is not None, cursor is not None), params))
    session.commit()
    return cut_page(rows, limit, lambda job: (job.created_at, job.id))


def count_jobs_by_status(session: Session) -> dict[str, int]:
    """Every status, zeros included, so a gauge never keeps a stale value for a status that emptied."""
    counts = {status.value: 0 for status in JobStatus}
    for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status)):
        counts[status] = count
    session.commit()
    return counts
