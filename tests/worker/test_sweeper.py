"""The sweeper: stale jobs back to the queue, forgotten queued jobs re-sent, presence in the workers table."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from store import repository
from store.db import Database
from store.models import Job, JobStatus, WorkerRecord
from tests.worker.conftest import WORKER_ID
from worker.runtime import WorkerRuntime
from worker.sweeper import Sweeper


def _heartbeat(job: Job) -> datetime:
    """The job's last heartbeat in UTC: the tests' clock, since a loaded machine can lag the wall by
    more than their one-second stale period between a claim and a tick."""
    assert job.heartbeat_at is not None
    return job.heartbeat_at if job.heartbeat_at.tzinfo else job.heartbeat_at.replace(tzinfo=timezone.utc)


def test_stale_running_job_is_requeued_then_enqueued(
    runtime: WorkerRuntime,
    database: Database,
    make_job: Callable[..., Job],
    read_job: Callable[[str], Job],
    drain_queue: Callable[[], list[str]],
) -> None:
    job = make_job()
    with database.sessions() as session:
        assert repository.claim_job(session, job.id, "vanished-worker", max_attempts=2) is not None
    sweeper = Sweeper(runtime)
    heartbeat = _heartbeat(read_job(job.id))
    stale = timedelta(seconds=runtime.settings.stale_after_s)

    assert sweeper.tick(now=heartbeat + stale / 2) == []  # heartbeat still fresh
    assert sweeper.tick(now=heartbeat + stale + timedelta(seconds=1)) == [job.id]

    after = read_job(job.id)
    assert after.status == JobStatus.queued.value
    assert after.worker_id is None
    assert drain_queue() == [job.id]


def test_stale_job_out_of_attempts_fails_as_worker_lost(
    runtime: WorkerRuntime, database: Database, make_job: Callable[..., Job], read_job: Callable[[str], Job],
    drain_queue: Callable[[], list[str]],
) -> None:
    job = make_job()
    for attempt in range(runtime.settings.max_attempts):
        with database.sessions() as session:
            assert repository.claim_job(session, job.id, f"worker-{attempt}", runtime.settings.max_attempts)
        later = datetime.now(timezone.utc) + timedelta(seconds=runtime.settings.stale_after_s + 1)
        Sweeper(runtime).tick(now=later)
    after = read_job(job.id)
    assert after.status == JobStatus.failed.value
    assert after.error_code == "worker_lost"
    assert drain_queue() == [job.id] * (runtime.settings.max_attempts - 1)


def _queued_job_and_sweeper(
    runtime: WorkerRuntime, make_job: Callable[..., Job]
) -> tuple[Job, Sweeper, timedelta, datetime]:
    """A fresh queued job, a sweeper, the stale period and the job's last change (the clock's zero)."""
    job = make_job()
    return job, Sweeper(runtime), timedelta(seconds=runtime.settings.stale_after_s), job.updated_at


def test_queued_job_nobody_claimed_is_enqueued_again_with_backoff(
    runtime: WorkerRuntime, make_job: Callable[..., Job], drain_queue: Callable[[], list[str]]
) -> None:
    job, sweeper, stale, start = _queued_job_and_sweeper(runtime, make_job)

    assert sweeper.tick(now=start + stale / 2) == []  # young: its first message is probably still on its way
    assert sweeper.tick(now=start + stale * 1.1) == [job.id]
    assert sweeper.tick(now=start + stale * 1.5) == []  # just re-sent
    assert sweeper.tick(now=start + stale * 2.2) == []  # back-off doubled: next one after 2 stale periods
    assert sweeper.tick(now=start + stale * 3.2) == [job.id]
    assert drain_queue() == [job.id, job.id]


def test_a_busy_worker_does_not_resend_the_backlog(
    runtime: WorkerRuntime, make_job: Callable[..., Job], drain_queue: Callable[[], list[str]]
) -> None:
    """A job behind a deep queue is waiting, not lost: only a worker idle for a stale period re-sends it."""
    job, sweeper, stale, start = _queued_job_and_sweeper(runtime, make_job)

    with runtime.busy():
        assert sweeper.tick(now=start + stale * 1.1) == []
        assert sweeper.tick(now=start + stale * 5) == []
    assert runtime.idle_since is not None  # the task ended
    runtime.idle_since = start + stale * 4  # as if the task had ended then
    assert sweeper.tick(now=start + stale * 4.5) == []  # idle, but not long enough to rule out a queue
    assert sweeper.tick(now=start + stale * 5.2) == [job.id]
    assert drain_queue() == [job.id]


def test_finished_or_running_jobs_are_left_alone(
    runtime: WorkerRuntime, database: Database, make_job: Callable[..., Job], read_job: Callable[[str], Job],
    drain_queue: Callable[[], list[str]],
) -> None:
    cancelled, running = make_job(), make_job()
    with database.sessions() as session:
        repository.request_cancel(session, cancelled.id)
        repository.claim_job(session, running.id, WORKER_ID, max_attempts=2)
    stale = timedelta(seconds=runtime.settings.stale_after_s)
    assert Sweeper(runtime).tick(now=_heartbeat(read_job(running.id)) + stale / 2) == []
    assert drain_queue() == []


def _live(database: Database) -> dict[str, WorkerRecord]:
    with database.sessions() as session:
        since = datetime.now(timezone.utc) - timedelta(seconds=60)
        return {record.id: record for record in repository.live_workers(session, seen_after=since)}


def test_presence_is_refreshed_every_tick_and_withdrawn_on_stop(runtime: WorkerRuntime, database: Database) -> None:
    sweeper = Sweeper(runtime)
    sweeper.start()
    try:
        deadline = time.monotonic() + 5
        while WORKER_ID not in _live(database) and time.monotonic() < deadline:
            time.sleep(0.05)
        first_seen = _live(database)[WORKER_ID].seen_at
        assert _live(database)[WORKER_ID].pid == os.getpid()
        assert _live(database)[WORKER_ID].device == {"type": "cpu", "name": "cpu", "count": 1}  # no CUDA here
        time.sleep(runtime.settings.heartbeat_s * 3)
        assert _live(database)[WORKER_ID].seen_at > first_seen
    finally:
        sweeper.stop()
    assert WORKER_ID not in _live(database)
