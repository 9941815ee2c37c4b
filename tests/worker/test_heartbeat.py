"""The heartbeat thread keeps the lease however long the engine is busy between callbacks."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from store import repository
from store.db import Database
from store.models import Job, JobStatus
from tests.worker.conftest import WORKER_ID
from worker.heartbeat import HeartbeatThread


def _claim(database: Database, job: Job) -> Job:
    with database.sessions() as session:
        claimed = repository.claim_job(session, job.id, WORKER_ID, max_attempts=3)
    assert claimed is not None
    return claimed


def test_lease_stays_fresh_while_the_main_thread_is_blocked(
    database: Database, make_job: Callable[..., Job], read_job: Callable[[str], Job]
) -> None:
    job = _claim(database, make_job())
    stale_after = timedelta(seconds=0.4)
    with HeartbeatThread(database.sessions, job.id, WORKER_ID, interval_s=0.1) as beating:
        time.sleep(1.2)  # a long evaluation: no engine callback for three stale periods
        with database.sessions() as session:
            requeued = repository.requeue_stale_jobs(
                session, stale_before=datetime.now(timezone.utc) - stale_after, max_attempts=3
            )
    assert requeued == []
    assert beating.beats >= 5
    after = read_job(job.id)
    assert after.status == JobStatus.running.value
    assert after.heartbeat_at > job.heartbeat_at


def test_without_heartbeats_the_same_job_would_be_requeued(
    database: Database, make_job: Callable[..., Job]
) -> None:
    job = _claim(database, make_job())
    time.sleep(0.5)
    with database.sessions() as session:
        requeued = repository.requeue_stale_jobs(
            session, stale_before=datetime.now(timezone.utc) - timedelta(seconds=0.4), max_attempts=3
        )
    assert requeued == [job.id]


def test_heartbeat_thread_ends_when_the_lease_is_lost(database: Database, make_job: Callable[..., Job]) -> None:
    job = _claim(database, make_job())
    beating = HeartbeatThread(database.sessions, job.id, WORKER_ID, interval_s=0.05)
    with database.sessions() as session:
        future = datetime.now(timezone.utc) + timedelta(seconds=60)
        repository.requeue_stale_jobs(session, stale_before=future, max_attempts=3)
    beating.start()
    beating._thread.join(timeout=5)  # noqa: SLF001 - the thread must end by itself, without stop()
    assert not beating._thread.is_alive()  # noqa: SLF001
    assert beating.beats == 0
