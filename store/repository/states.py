"""The state machine: the only code that changes a job's status, and the fresh read that follows a change.

Every status change goes through `transition`, which checks the edge against ALLOWED_TRANSITIONS and
applies it as a conditional UPDATE (WHERE status = from), so two processes racing for the same job
cannot both win: the loser's UPDATE matches no row and it learns so from the row count, without a lock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session, selectinload

from store.models import Job, JobStatus, utcnow
from store.repository.errors import IllegalTransition, NotFound
from store.repository.ownership import owned

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


def transition(
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


def load_job(session: Session, job_id: str, owner: str | None = None) -> Job:
    """A fresh read: populate_existing discards what the identity map remembers from before an UPDATE."""
    statement = (
        select(Job)
        .where(Job.id == job_id, owned(Job.owner, owner))
        .options(selectinload(Job.artifacts))
        .execution_options(populate_existing=True)
    )
    job = session.scalars(statement).one_or_none()
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def commit_and_load(session: Session, job_id: str) -> Job:
    """Commit a change, then answer with the row as it is now: the caller returns what it wrote, and the
    UPDATE bypassed the ORM, so the object in hand would still show the old state."""
    session.commit()
    job = load_job(session, job_id)
    session.commit()  # end the read transaction; the returned object stays readable
    return job
