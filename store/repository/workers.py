"""Worker presence: each live worker keeps a row fresh, so readiness can ask the database it already
shares with the workers whether any is alive, with no broker round trip."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store.models import WorkerRecord, utcnow


def touch_worker(
    session: Session, worker_id: str, hostname: str, pid: int, now: datetime | None = None,
    device: dict[str, Any] | None = None,
) -> None:
    """Record that this worker is alive now, on `device` (insert on first call, then refresh seen_at)."""
    now = now or utcnow()
    fresh = {"seen_at": now, "device": device}
    updated = session.execute(update(WorkerRecord).where(WorkerRecord.id == worker_id).values(**fresh))
    if updated.rowcount == 0:
        session.add(WorkerRecord(id=worker_id, hostname=hostname, pid=pid, started_at=now, **fresh))
        try:
            session.commit()
            return
        except IntegrityError:  # a concurrent first touch of the same id: the row exists now
            session.rollback()
            session.execute(update(WorkerRecord).where(WorkerRecord.id == worker_id).values(**fresh))
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


# A worker that missed this many heartbeats is gone (readiness and the device check agree on it).
PRESENCE_MISSED_BEATS = 3


def present_workers(session: Session, heartbeat_s: float, now: datetime | None = None) -> list[WorkerRecord]:
    """The workers that reported within the last PRESENCE_MISSED_BEATS heartbeats, most recent first."""
    now = now or utcnow()
    return live_workers(session, now - timedelta(seconds=PRESENCE_MISSED_BEATS * heartbeat_s))
