"""Claiming is a conditional update: one winner per queued job, however the message arrives."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from store import repository
from store.db import Database
from store.models import JobStatus, utcnow
from store.repository import LeaseLost
from tests.store.support import force_state, make_job, snapshot


def test_duplicate_delivery_claims_job_once(session: Session) -> None:
    job = make_job(session)

    first = repository.claim_job(session, job.id, "worker-1", max_attempts=3)
    second = repository.claim_job(session, job.id, "worker-1", max_attempts=3)
    other = repository.claim_job(session, job.id, "worker-2", max_attempts=3)

    assert first is not None and first.attempts == 1
    assert second is None and other is None
    row = snapshot(session, job.id)
    assert (row["attempts"], row["worker_id"], row["version"]) == (1, "worker-1", 1)


def test_claim_of_cancelled_job_returns_none(session: Session) -> None:
    job = make_job(session)
    repository.request_cancel(session, job.id)

    assert repository.claim_job(session, job.id, "worker-1", max_attempts=3) is None
    assert snapshot(session, job.id)["status"] == "cancelled"


def test_claim_of_unknown_job_returns_none(session: Session) -> None:
    assert repository.claim_job(session, "job_ffffffffffffffff", "worker-1", max_attempts=3) is None


def test_claim_beyond_max_attempts_fails_the_job_with_too_many_attempts(session: Session) -> None:
    job = make_job(session)
    force_state(session, job.id, attempts=3)

    assert repository.claim_job(session, job.id, "worker-1", max_attempts=3) is None

    failed = repository.get_job(session, job.id)
    assert (failed.status, failed.error_code, failed.attempts) == ("failed", "too_many_attempts", 3)
    assert failed.finished_at is not None


def test_reclaim_after_requeue_counts_attempts_and_keeps_first_start_time(session: Session) -> None:
    job = make_job(session)
    first = repository.claim_job(session, job.id, "worker-1", max_attempts=3)
    assert first is not None
    repository.requeue_stale_jobs(session, stale_before=utcnow() + timedelta(minutes=1), max_attempts=3)

    second = repository.claim_job(session, job.id, "worker-2", max_attempts=3)

    assert second is not None
    assert (second.attempts, second.worker_id, second.stage) == (2, "worker-2", "preparing_data")
    assert second.started_at == first.started_at


def test_threads_racing_to_claim_one_job_have_exactly_one_winner(database: Database) -> None:
    with database.session() as session:
        job = make_job(session)
    contenders = 6
    barrier = threading.Barrier(contenders)
    results: list[bool] = []
    errors: list[BaseException] = []

    def contend(index: int) -> None:
        try:
            with database.session() as session:
                barrier.wait(timeout=30)
                results.append(repository.claim_job(session, job.id, f"worker-{index}", max_attempts=3) is not None)
        except BaseException as error:  # surfaced below: a thread's exception must fail the test
            errors.append(error)

    threads = [threading.Thread(target=contend, args=(index,)) for index in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sorted(results) == [False] * (contenders - 1) + [True]
    with database.session() as session:
        row = snapshot(session, job.id)
    assert (row["status"], row["attempts"], row["version"]) == ("running", 1, 1)


CLAIM_SCRIPT = """
import sys
from store import repository
from store.db import Database

database = Database(sys.argv[1])
database.engine.connect().close()  # connect before the start signal, so all contenders start level
print("ready", flush=True)
sys.stdin.readline()
with database.session() as session:
    job = repository.claim_job(session, sys.argv[2], sys.argv[3], max_attempts=3)
print("won" if job is not None else "lost", flush=True)
"""


def test_processes_racing_to_claim_one_job_have_exactly_one_winner(database: Database) -> None:
    with database.session() as session:
        job = make_job(session)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIM_SCRIPT, database.url, job.id, f"process-{index}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for index in range(2)
    ]
    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        for process in processes:  # release all of them at once
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outcomes = []
        for process in processes:
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0, err
            outcomes.append(out.strip())
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()

    assert sorted(outcomes) == ["lost", "won"]
    with database.session() as session:
        row = snapshot(session, job.id)
    assert (row["status"], row["attempts"]) == ("running", 1)
    assert row["worker_id"].startswith("process-")


def test_heartbeat_refreshes_the_lease_without_bumping_version(session: Session) -> None:
    job = make_job(session)
    claimed = repository.claim_job(session, job.id, "worker-1", max_attempts=3)
    assert claimed is not None
    claimed_version = claimed.version
    old_beat = utcnow() - timedelta(minutes=5)
    force_state(session, job.id, heartbeat_at=old_beat)

    assert repository.heartbeat(session, job.id, "worker-1") == JobStatus.running

    row = snapshot(session, job.id)
    assert row["version"] == claimed_version
    assert repository.get_job(session, job.id).heartbeat_at > old_beat


def test_heartbeat_with_progress_writes_stage_and_progress_and_bumps_version(session: Session) -> None:
    job = make_job(session)
    claimed = repository.claim_job(session, job.id, "worker-1", max_attempts=3)
    assert claimed is not None
    claimed_version = claimed.version

    repository.heartbeat(session, job.id, "worker-1", stage="training_teacher", progress={"epoch": 2, "fraction": 0.1})

    fresh = repository.get_job(session, job.id)
    assert (fresh.stage, fresh.progress) == ("training_teacher", {"epoch": 2, "fraction": 0.1})
    assert fresh.version == claimed_version + 1


def test_heartbeat_reports_cancelling_to_the_worker(session: Session) -> None:
    job = make_job(session)
    repository.claim_job(session, job.id, "worker-1", max_attempts=3)
    repository.request_cancel(session, job.id)

    assert repository.heartbeat(session, job.id, "worker-1", progress={"epoch": 3}) == JobStatus.cancelling
    assert repository.get_job(session, job.id).progress == {"epoch": 3}


def test_heartbeat_from_a_worker_that_does_not_own_the_job_writes_nothing(session: Session) -> None:
    job = make_job(session)
    repository.claim_job(session, job.id, "worker-1", max_attempts=3)
    before = snapshot(session, job.id)

    with pytest.raises(LeaseLost):
        repository.heartbeat(session, job.id, "worker-2", stage="distilling", progress={"epoch": 9})

    assert snapshot(session, job.id) == before


def test_heartbeat_after_the_job_was_requeued_raises_lease_lost(session: Session) -> None:
    job = make_job(session)
    repository.claim_job(session, job.id, "worker-1", max_attempts=3)
    repository.requeue_stale_jobs(session, stale_before=utcnow() + timedelta(minutes=1), max_attempts=3)

    with pytest.raises(LeaseLost):
        repository.heartbeat(session, job.id, "worker-1", progress={"epoch": 1})
    assert snapshot(session, job.id)["progress"] is None


def test_heartbeat_on_a_finished_job_writes_nothing_and_reports_its_status(session: Session) -> None:
    job = make_job(session)
    repository.claim_job(session, job.id, "worker-1", max_attempts=3)
    repository.finish_job(session, job.id, "worker-1", JobStatus.succeeded)
    before = snapshot(session, job.id)

    assert repository.heartbeat(session, job.id, "worker-1", stage="rendering") == JobStatus.succeeded
    assert snapshot(session, job.id) == before


def test_heartbeat_for_unknown_job_raises_not_found(session: Session) -> None:
    with pytest.raises(repository.NotFound):
        repository.heartbeat(session, "job_ffffffffffffffff", "worker-1")
