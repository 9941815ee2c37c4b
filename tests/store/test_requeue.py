"""Jobs whose worker stopped heartbeating: re-queued a bounded number of times, then failed 'worker_lost'."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from store import repository
from store.models import JobStatus, utcnow
from store.repository import LeaseLost
from tests.store.support import force_state, make_job, snapshot


def _later() -> object:
    """A stale_before after every heartbeat written so far: everything active counts as stale."""
    return utcnow() + timedelta(minutes=1)


def test_stale_running_job_is_requeued_and_released(session: Session) -> None:
    job = make_job(session)
    repository.claim_job(session, job.id, "worker-1", max_attempts=3)

    assert repository.requeue_stale_jobs(session, _later(), max_attempts=3) == [job.id]

    row = snapshot(session, job.id)
    assert (row["status"], row["worker_id"], row["stage"], row["attempts"]) == ("queued", None, None, 1)


def test_job_with_a_fresh_heartbeat_is_left_alone(session: Session) -> None:
    job = make_job(session)
    repository.claim_job(session, job.id, "worker-1", max_attempts=3)
    before = snapshot(session, job.id)

    assert repository.requeue_stale_jobs(session, utcnow() - timedelta(minutes=1), max_attempts=3) == []
    assert snapshot(session, job.id) == before


def test_stale_job_at_the_attempt_bound_fails_with_worker_lost(session: Session) -> None:
    job = make_job(session)
    repository.claim_job(session, job.id, "worker-1", max_attempts=3)
    force_state(session, job.id, attempts=3)

    assert repository.requeue_stale_jobs(session, _later(), max_attempts=3) == []

    failed = repository.get_job(session, job.id)
    assert (failed.status, failed.error_code) == ("failed", "worker_lost")
    assert failed.finished_at is not None


def test_stale_cancelling_job_becomes_cancelled(session: Session) -> None:
    job = make_job(session)
    repository.claim_job(session, job.id, "worker-1", max_attempts=3)
    repository.request_cancel(session, job.id)

    assert repository.requeue_stale_jobs(session, _later(), max_attempts=3) == []
    assert repository.get_job(session, job.id).status == "cancelled"


def test_queued_and_finished_jobs_are_never_touched(session: Session) -> None:
    queued = make_job(session)
    done = make_job(session)
    repository.claim_job(session, done.id, "worker-1", max_attempts=3)
    repository.finish_job(session, done.id, "worker-1", JobStatus.succeeded)
    before = [snapshot(session, queued.id), snapshot(session, done.id)]

    assert repository.requeue_stale_jobs(session, _later(), max_attempts=3) == []
    assert [snapshot(session, queued.id), snapshot(session, done.id)] == before


def test_a_job_losing_every_worker_is_retried_up_to_the_bound_then_fails(session: Session) -> None:
    job = make_job(session)
    for attempt in range(1, 4):
        claimed = repository.claim_job(session, job.id, f"worker-{attempt}", max_attempts=3)
        assert claimed is not None and claimed.attempts == attempt
        requeued = repository.requeue_stale_jobs(session, _later(), max_attempts=3)
        assert requeued == ([job.id] if attempt < 3 else [])

    final = repository.get_job(session, job.id)
    assert (final.status, final.error_code, final.attempts) == ("failed", "worker_lost", 3)


def test_worker_that_lost_its_job_cannot_finish_it(session: Session) -> None:
    job = make_job(session)
    repository.claim_job(session, job.id, "worker-1", max_attempts=3)
    repository.requeue_stale_jobs(session, _later(), max_attempts=3)
    repository.claim_job(session, job.id, "worker-2", max_attempts=3)

    with pytest.raises(LeaseLost):
        repository.finish_job(session, job.id, "worker-1", JobStatus.succeeded)
    assert snapshot(session, job.id)["worker_id"] == "worker-2"


def test_release_hands_a_running_job_back_without_using_an_attempt(session: Session) -> None:
    job, _ = repository.create_job(session, {"name": "x"}, "x")
    claimed = repository.claim_job(session, job.id, "w1", max_attempts=3)
    assert claimed is not None and claimed.attempts == 1
    assert repository.release_job(session, job.id, "w2") is False  # not the owner: nothing changes
    assert repository.get_job(session, job.id).status == "running"
    assert repository.release_job(session, job.id, "w1") is True
    released = repository.get_job(session, job.id)
    assert (released.status, released.attempts, released.worker_id) == ("queued", 0, None)
    assert repository.claim_job(session, job.id, "w2", max_attempts=3).attempts == 1
