"""Job repository: the only code that changes a job's state.

Every status change goes through `_transition`, which checks the edge against
ALLOWED_TRANSITIONS and applies it as a conditional UPDATE (WHERE status = from),
so two processes racing for the same job cannot both win.

CONTRACT (filled in by the store implementation; api/ and worker/ code against it):
all functions take a SQLAlchemy `Session` first and commit themselves unless
noted, returning detached-safe ORM objects (expire_on_commit=False sessions).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from store.models import Artifact, DatasetRecord, Job, JobStatus, ModelRecord

ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
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


class IllegalTransition(Exception):
    """The job is not in a state that allows the requested change (API answers 409)."""

    def __init__(self, job_id: str, current: str, wanted: str) -> None:
        super().__init__(f"job {job_id} is {current}; cannot become {wanted}")
        self.job_id, self.current, self.wanted = job_id, current, wanted


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


def create_job(session: Session, spec: dict[str, Any], name: str, idempotency_key: str | None = None) -> tuple[Job, bool]:
    """Insert a queued job; returns (job, created). Same key + same spec -> (existing, False);
    same key + other spec -> IdempotencyConflict. The caller enqueues only after this returns."""
    raise NotImplementedError


def get_job(session: Session, job_id: str) -> Job:
    """The job with its artifacts loaded; NotFound if absent."""
    raise NotImplementedError


def list_jobs(session: Session, status: JobStatus | None, limit: int, cursor: str | None) -> tuple[list[Job], str | None]:
    """Newest first (created_at desc, id desc); returns (page, next_cursor or None). The cursor is
    opaque (base64 of created_at + id); a malformed cursor raises ValueError."""
    raise NotImplementedError


def claim_job(session: Session, job_id: str, worker_id: str, max_attempts: int) -> Job | None:
    """queued -> running (stage 'preparing_data'), attempts += 1, heartbeat now, started_at set once.
    Returns None when the job is not queued (duplicate delivery, cancelled) - the caller does nothing."""
    raise NotImplementedError


def heartbeat(session: Session, job_id: str, worker_id: str, stage: str | None = None,
              progress: dict[str, Any] | None = None) -> JobStatus:
    """Refresh heartbeat_at (and stage/progress when given) if this worker owns the job;
    returns the current status so the worker sees 'cancelling'."""
    raise NotImplementedError


def finish_job(session: Session, job_id: str, worker_id: str, status: JobStatus,
               metrics: dict[str, Any] | None = None, error: JobError | None = None) -> Job:
    """running/cancelling -> succeeded | failed | cancelled, finished_at set, stage cleared."""
    raise NotImplementedError


def request_cancel(session: Session, job_id: str) -> Job:
    """queued -> cancelled at once; running -> cancelling (worker stops between steps);
    cancelling -> unchanged; terminal -> IllegalTransition."""
    raise NotImplementedError


def requeue_stale_jobs(session: Session, stale_before: datetime, max_attempts: int) -> list[str]:
    """Jobs running/cancelling with heartbeat older than stale_before: cancelling -> cancelled;
    running with attempts < max_attempts -> queued (returned, to be enqueued again after commit);
    otherwise -> failed with code 'worker_lost'."""
    raise NotImplementedError


def add_artifact(session: Session, job_id: str, name: str, relpath: str, content_type: str, size_bytes: int) -> Artifact:
    """Record (or replace, on a resumed attempt) one artifact of a job."""
    raise NotImplementedError


def get_artifact(session: Session, job_id: str, name: str) -> Artifact:
    """NotFound when the job has no artifact of that exact name."""
    raise NotImplementedError


def count_jobs_by_status(session: Session) -> dict[str, int]:
    raise NotImplementedError


def create_model(session: Session, record: ModelRecord) -> ModelRecord:
    raise NotImplementedError


def get_model(session: Session, model_id: str) -> ModelRecord:
    raise NotImplementedError


def list_models(session: Session, limit: int = 100) -> list[ModelRecord]:
    raise NotImplementedError


def create_dataset(session: Session, record: DatasetRecord) -> DatasetRecord:
    raise NotImplementedError


def get_dataset(session: Session, dataset_id: str) -> DatasetRecord:
    raise NotImplementedError


def list_datasets(session: Session, limit: int = 100) -> list[DatasetRecord]:
    raise NotImplementedError
