"""Small helpers shared by the store tests: make jobs, put rows in a state, read rows back."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from store import repository
from store.models import Job, JobStatus, utcnow

SPEC: dict[str, Any] = {
    "name": "digits-e2kd",
    "dataset": {"name": "digits", "image_size": 32},
    "teacher": {"arch": "resnet20", "weights": None, "epochs": 1},
    "student": {"arch": "resnet8"},
    "method": "e2kd",
}


def spec(**changes: Any) -> dict[str, Any]:
    return {**SPEC, **changes}


def make_job(session: Session, name: str = "digits-e2kd", idempotency_key: str | None = None, **changes: Any) -> Job:
    job, created = repository.create_job(session, spec(name=name, **changes), name, idempotency_key)
    assert created
    return job


def force_state(session: Session, job_id: str, **values: Any) -> None:
    """Test setup only: write columns directly, bypassing the state machine."""
    session.execute(update(Job).where(Job.id == job_id).values(**values))
    session.commit()


def job_in_status(session: Session, status: JobStatus, worker_id: str = "worker-1") -> Job:
    """A job placed directly in `status`, owned by `worker_id` when a worker would own it."""
    job = make_job(session)
    owned = status in (JobStatus.running, JobStatus.cancelling)
    force_state(
        session, job.id, status=status.value, worker_id=worker_id if owned else None,
        heartbeat_at=utcnow() if owned else None, attempts=1 if owned else 0,
    )  # fmt: skip
    return repository.get_job(session, job.id)


def snapshot(session: Session, job_id: str) -> dict[str, Any]:
    """Every column of the row as stored now."""
    row = session.execute(select(Job.__table__).where(Job.id == job_id)).mappings().one()
    session.commit()
    return dict(row)
