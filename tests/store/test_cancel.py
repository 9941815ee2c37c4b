"""Cancelling depends on where the job is: at once while queued, cooperatively while running."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from store import repository
from store.models import JobStatus
from store.repository import IllegalTransition
from tests.store.support import job_in_status, make_job, snapshot


def test_cancel_of_queued_job_cancels_it_at_once(session: Session) -> None:
    job = make_job(session)

    cancelled = repository.request_cancel(session, job.id)

    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert repository.claim_job(session, job.id, "worker-1", max_attempts=3) is None


def test_cancel_of_running_job_asks_the_worker_which_then_finishes_cancelled(session: Session) -> None:
    job = make_job(session)
    repository.claim_job(session, job.id, "worker-1", max_attempts=3)

    cancelling = repository.request_cancel(session, job.id)
    assert cancelling.status == "cancelling" and cancelling.finished_at is None

    assert repository.heartbeat(session, job.id, "worker-1") == JobStatus.cancelling
    cancelled = repository.finish_job(session, job.id, "worker-1", JobStatus.cancelled)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None and cancelled.stage is None


def test_cancel_of_cancelling_job_changes_nothing(session: Session) -> None:
    job = job_in_status(session, JobStatus.cancelling)
    before = snapshot(session, job.id)

    again = repository.request_cancel(session, job.id)

    assert again.status == "cancelling"
    assert snapshot(session, job.id) == before


@pytest.mark.parametrize("status", [JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled], ids=str)
def test_cancel_of_finished_job_raises_illegal_transition(session: Session, status: JobStatus) -> None:
    job = job_in_status(session, status)
    before = snapshot(session, job.id)

    with pytest.raises(IllegalTransition) as raised:
        repository.request_cancel(session, job.id)

    assert raised.value.current == status.value
    assert snapshot(session, job.id) == before


@pytest.mark.parametrize("outcome", [JobStatus.succeeded, JobStatus.failed], ids=str)
def test_job_that_ends_before_seeing_the_cancel_keeps_its_real_outcome(session: Session, outcome: JobStatus) -> None:
    job = make_job(session)
    repository.claim_job(session, job.id, "worker-1", max_attempts=3)
    repository.request_cancel(session, job.id)

    finished = repository.finish_job(session, job.id, "worker-1", outcome)

    assert finished.status == outcome.value


def test_cancel_of_unknown_job_raises_not_found(session: Session) -> None:
    with pytest.raises(repository.NotFound):
        repository.request_cancel(session, "job_ffffffffffffffff")
