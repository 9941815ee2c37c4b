"""A job still training when the database comes back after an outage longer than DISTILL_STALE_AFTER_S.

Decided: it keeps its worker and ends succeeded once. Every heartbeat failed during the outage, so the
moment the database returns every running job looks stale; a sweeper that has just seen the database
come back waits one stale period before judging, so the live worker beats first. A job whose worker
really died is still re-queued, one stale period after the database returned."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from store import repository
from store.db import Database
from store.models import Job, JobStatus
from tests.worker.conftest import make_job, read_job, runtime, worker_settings  # noqa: F401 - fixtures
from worker.runtime import WorkerRuntime
from worker.sweeper import Sweeper


def _utc(moment: datetime | None) -> datetime:
    assert moment is not None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _wait_until_wall(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(timezone.utc)).total_seconds()))


def test_a_training_job_outlives_a_long_outage_and_succeeds_once(
    runtime: WorkerRuntime, database: Database, make_job: Callable[..., Job],  # noqa: F811
    read_job: Callable[[str], Job],  # noqa: F811
) -> None:
    down = {"now": False}

    @contextmanager
    def sessions() -> Iterator[Session]:
        if down["now"]:
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))
        with database.sessions() as session:
            yield session

    sweeper = Sweeper(replace(runtime, sessions=sessions))
    stale = timedelta(seconds=runtime.settings.stale_after_s)
    training, dead = make_job(), make_job()
    with database.sessions() as session:
        assert repository.claim_job(session, training.id, "training-worker", max_attempts=2)
        assert repository.claim_job(session, dead.id, "dead-worker", max_attempts=2)
    start = _utc(read_job(training.id).heartbeat_at)

    down["now"] = True  # the outage: the sweeper's tick fails, and no heartbeat lands
    with pytest.raises(OperationalError):
        sweeper.tick(now=start + stale / 4)
    down["now"] = False
    back = start + 2 * stale  # the database answers again, two stale periods after the last heartbeat
    assert sweeper.tick(now=back) == []  # both look stale now; neither is judged yet

    _wait_until_wall(back + stale / 2)
    with database.sessions() as session:  # the live worker's heartbeat thread beats again
        repository.heartbeat(session, training.id, "training-worker", progress={"epoch": 2, "total_epochs": 3})
    judged = sweeper.tick(now=back + stale + timedelta(milliseconds=100))

    assert judged == [dead.id]  # the dead one goes back to the queue; the training one stays
    with database.sessions() as session:
        done = repository.finish_job(session, training.id, "training-worker", JobStatus.succeeded,
                                     metrics={"student_accuracy": 0.9})
    assert sweeper.tick(now=back + 3 * stale) == []
    final = read_job(training.id)
    assert (done.status, final.status, final.attempts, final.worker_id) == ("succeeded", "succeeded", 1,
                                                                             "training-worker")
    assert final.error_code is None
