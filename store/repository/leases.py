"""A worker's lease on a job: claim, heartbeat, finish, give back; the sweeper's requeue of stale leases; and
a client's cancel, which the lease holder learns of through its heartbeat.

A worker holds a job while `worker_id` names it and the job is running or cancelling; every write it
makes is conditional on that, so a worker that lost its lease (the job was re-queued after its
heartbeats stopped) raises LeaseLost instead of overwriting the new attempt's work.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from store.models import TERMINAL_STATUSES, Job, JobStatus, utcnow
from store.repository.errors import IllegalTransition, JobError, LeaseLost, NotFound
from store.repository.states import commit_and_load, load_job, transition

logger = logging.getLogger(__name__)

CLAIM_STAGE = "preparing_data"
_ACTIVE = (JobStatus.running.value, JobStatus.cancelling.value)


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
        failed = transition(
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
    claimed = transition(
        session, job_id, JobStatus.queued, JobStatus.running,
        where=(Job.attempts == job.attempts,),
        worker_id=worker_id, attempts=Job.attempts + 1, heartbeat_at=now, stage=CLAIM_STAGE,
        started_at=func.coalesce(Job.started_at, now),
    )  # fmt: skip
    if not claimed:
        session.rollback()
        logger.info("job %s: claim by %s lost the race", job_id, worker_id)
        return None
    return commit_and_load(session, job_id)


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
    write before the end can say 0.9, or epoch 0 of a stage that had just begun; the API and the dashboard
    must both show a finished run as its last epoch and step, fraction 1.0 (the rest is kept)."""
    done = {**(progress or {}), "fraction": 1.0}
    for count, total in (("epoch", "total_epochs"), ("step", "total_steps")):
        if isinstance(done.get(total), int) and done[total] > 0:
            done[count] = done[total]
    return done


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
        job = load_job(session, job_id)
        session.commit()
        if job.worker_id != worker_id:
            raise LeaseLost(job_id, job.status, target.value, worker_id)
        if target is JobStatus.succeeded:
            values["progress"] = completed_progress(job.progress)
        if transition(session, job_id, JobStatus(job.status), target, owner=worker_id, **values):
            return commit_and_load(session, job_id)
        session.rollback()
    raise IllegalTransition(job_id, job.status, target.value)


def request_cancel(session: Session, job_id: str, owner: str | None = None) -> Job:
    """queued/waiting -> cancelled at once; running -> cancelling (worker stops between steps);
    cancelling -> unchanged; terminal -> IllegalTransition. NotFound for another owner's job."""
    for _ in range(5):  # each retry means the job moved under us (e.g. claimed); re-read and decide again
        job = load_job(session, job_id, owner)
        session.commit()
        current = JobStatus(job.status)
        if current == JobStatus.cancelling:
            return job
        if current in (JobStatus.queued, JobStatus.waiting):
            done = transition(session, job_id, current, JobStatus.cancelled, finished_at=utcnow(), stage=None)
        elif current == JobStatus.running:
            done = transition(session, job_id, current, JobStatus.cancelling)
        else:
            raise IllegalTransition(job_id, current.value, JobStatus.cancelled.value)
        if done:
            return commit_and_load(session, job_id)
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
            transition(session, job_id, JobStatus.cancelling, JobStatus.cancelled,
                       where=still_stale, finished_at=now, stage=None)  # fmt: skip
        elif attempts < max_attempts:
            if transition(session, job_id, JobStatus.running, JobStatus.queued,
                          where=still_stale, worker_id=None, stage=None, heartbeat_at=None):  # fmt: skip
                requeued.append(job_id)
        else:
            transition(
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
    released = transition(
        session, job_id, JobStatus.running, JobStatus.queued, owner=worker_id,
        worker_id=None, stage=None, heartbeat_at=None, attempts=Job.attempts - 1,
    )  # fmt: skip
    session.commit()
    return released


def retry_job(session: Session, job_id: str, worker_id: str) -> bool:
    """running -> queued for its owner, keeping the attempt: the attempt failed in a way a new attempt may
    not (a rank of a multi-device job died) and resumes from the job's checkpoints. claim_job counts the
    attempts, so a job that keeps failing so ends failed ('too_many_attempts'). The caller enqueues it again."""
    retried = transition(
        session, job_id, JobStatus.running, JobStatus.queued, owner=worker_id,
        worker_id=None, stage=None, heartbeat_at=None,
    )  # fmt: skip
    session.commit()
    return retried
