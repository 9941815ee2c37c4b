"""Worker presence: readiness sees a worker from its heartbeats alone, and forgets it on shutdown."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from store import repository
from store.models import utcnow


def test_touched_worker_is_live_until_its_heartbeat_ages_out(session: Session) -> None:
    repository.touch_worker(session, "w1", "host", 123)
    repository.touch_worker(session, "w1", "host", 123)  # a refresh, not a second row
    live = repository.live_workers(session, utcnow() - timedelta(seconds=5))
    assert [w.id for w in live] == ["w1"]
    assert repository.live_workers(session, utcnow() + timedelta(seconds=1)) == []


def test_removed_worker_is_not_live(session: Session) -> None:
    repository.touch_worker(session, "w1", "host", 1)
    repository.touch_worker(session, "w2", "host", 2)
    repository.remove_worker(session, "w1")
    assert [w.id for w in repository.live_workers(session, utcnow() - timedelta(minutes=1))] == ["w2"]
