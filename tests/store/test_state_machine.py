"""The job state machine: the table of allowed edges is enforced, and the public operations walk it."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from store import repository
from store.models import TERMINAL_STATUSES, JobStatus
from store.repository import ALLOWED_TRANSITIONS, IllegalTransition, JobError, LeaseLost
from store.repository.states import transition
from tests.store.support import job_in_status, make_job, snapshot


@pytest.mark.parametrize("source", list(JobStatus), ids=lambda status: status.value)
def test_every_allowed_edge_moves_the_job_and_bumps_version(session: Session, source: JobStatus) -> None:
    for target in sorted(ALLOWED_TRANSITIONS[source], key=lambda status: status.value):
        job = job_in_status(session, source)
        before = snapshot(session, job.id)

        assert transition(session, job.id, source, target) is True
        session.commit()

        after = snapshot(session, job.id)
        assert after["status"] == target.value
        assert after["version"] == before["version"] + 1
        assert after["updated_at"] >= before["updated_at"]


@pytest.mark.parametrize("source", list(JobStatus), ids=lambda status: status.value)
def test_illegal_edges_raise_and_leave_the_row_unchanged(session: Session, source: JobStatus) -> None:
    illegal = [target for target in JobStatus if target not in ALLOWED_TRANSITIONS[source]]
    assert illegal  # every state forbids something (at least a return to queued from a terminal state)
    for target in illegal:
        job = job_in_status(session, source)
        before = snapshot(session, job.id)

        with pytest.raises(IllegalTransition) as raised:
            transition(session, job.id, source, target)
        session.rollback()

        assert (raised.value.current, raised.value.wanted) == (source.value, target.value)
        assert snapshot(session, job.id) == before


def test_terminal_states_have_no_way_out() -> None:
    for status in TERMINAL_STATUSES:
        assert ALLOWED_TRANSITIONS[status] == frozenset()


def test_transition_from_a_state_the_row_left_loses_and_changes_nothing(session: Session) -> None:
    job = job_in_status(session, JobStatus.running)
    before = snapshot(session, job.id)

    assert transition(session, job.id, JobStatus.queued, JobStatus.running) is False
    session.commit()

    assert snapshot(session, job.id) == before


def test_transition_for_another_owner_loses(session: Session) -> None:
    job = job_in_status(session, JobStatus.running, worker_id="worker-1")

    assert transition(session, job.id, JobStatus.running, JobStatus.succeeded, owner="worker-2") is False
    session.commit()

    assert snapshot(session, job.id)["status"] == "running"


def test_job_runs_from_queued_to_succeeded_with_metrics(session: Session) -> None:
    job = make_job(session)
    assert job.status == "queued" and job.attempts == 0 and job.version == 0

    claimed = repository.claim_job(session, job.id, "worker-1", max_attempts=3)
    assert claimed is not None
    assert (claimed.status, claimed.stage, claimed.worker_id) == ("running", "preparing_data", "worker-1")
    assert claimed.attempts == 1
    assert claimed.started_at is not None and claimed.heartbeat_at is not None

    progress = {"epoch": 1, "fraction": 0.5}
    status = repository.heartbeat(session, job.id, "worker-1", stage="distilling", progress=progress)
    assert status == JobStatus.running

    done = repository.finish_job(session, job.id, "worker-1", JobStatus.succeeded, metrics={"student_accuracy": 0.9})
    assert (done.status, done.stage, done.metrics) == ("succeeded", None, {"student_accuracy": 0.9})
    assert done.finished_at is not None and done.finished_at >= done.started_at
    assert done.progress == {"epoch": 1, "fraction": 1.0}  # a succeeded job reads complete; the rest is kept
    assert done.version == 3  # claim, progress, finish


def test_failed_job_records_code_message_field_and_where(session: Session) -> None:
    job = make_job(session)
    repository.claim_job(session, job.id, "worker-1", max_attempts=3)

    error = JobError(
        code="invalid_spec", message="teacher has 10 classes, dataset 3", field="teacher.weights", where="distill"
    )
    failed = repository.finish_job(session, job.id, "worker-1", JobStatus.failed, error=error)

    assert failed.status == "failed"
    assert (failed.error_code, failed.error_message, failed.error_field, failed.error_where) == (
        "invalid_spec", "teacher has 10 classes, dataset 3", "teacher.weights", "distill",
    )  # fmt: skip


def test_finish_by_a_worker_that_does_not_own_the_job_raises_lease_lost(session: Session) -> None:
    job = make_job(session)
    repository.claim_job(session, job.id, "worker-1", max_attempts=3)
    before = snapshot(session, job.id)

    with pytest.raises(LeaseLost):
        repository.finish_job(session, job.id, "worker-2", JobStatus.succeeded)

    assert snapshot(session, job.id) == before


def test_finish_twice_raises_illegal_transition(session: Session) -> None:
    job = make_job(session)
    repository.claim_job(session, job.id, "worker-1", max_attempts=3)
    repository.finish_job(session, job.id, "worker-1", JobStatus.succeeded)

    with pytest.raises(IllegalTransition):
        repository.finish_job(session, job.id, "worker-1", JobStatus.failed)
    assert repository.get_job(session, job.id).status == "succeeded"


def test_finish_with_a_non_terminal_status_is_refused(session: Session) -> None:
    job = make_job(session)
    repository.claim_job(session, job.id, "worker-1", max_attempts=3)

    with pytest.raises(ValueError, match="terminal"):
        repository.finish_job(session, job.id, "worker-1", JobStatus.running)


def test_running_job_cannot_jump_to_cancelled_without_cancelling(session: Session) -> None:
    job = make_job(session)
    repository.claim_job(session, job.id, "worker-1", max_attempts=3)

    with pytest.raises(IllegalTransition):
        repository.finish_job(session, job.id, "worker-1", JobStatus.cancelled)
    assert repository.get_job(session, job.id).status == "running"


def test_get_unknown_job_raises_not_found(session: Session) -> None:
    with pytest.raises(repository.NotFound):
        repository.get_job(session, "job_0000000000000000")
