"""WorkerCallbacks: what the engine's callbacks write to, and read from, the job row."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from core.train.callbacks import Progress
from store import repository
from store.db import Database
from store.models import Job, JobStatus
from tests.worker.conftest import WORKER_ID
from worker.callbacks import CANCEL_POLL_S, WorkerCallbacks, json_safe


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def claimed(database: Database, make_job: Callable[..., Job]) -> Job:
    job = make_job()
    with database.sessions() as session:
        claimed_job = repository.claim_job(session, job.id, WORKER_ID, max_attempts=3)
    assert claimed_job is not None
    return claimed_job


def _callbacks(database: Database, job: Job, clock: FakeClock, **kwargs) -> WorkerCallbacks:
    return WorkerCallbacks(database.sessions, job.id, WORKER_ID, progress_interval_s=1.0, clock=clock, **kwargs)


def _progress(epoch: int, step: int, loss: float = 0.5) -> Progress:
    return Progress("distilling", epoch, 3, step, 10, fraction=0.1 * step, metrics={"loss": loss})


def test_stage_is_written_at_once(database: Database, claimed: Job, read_job: Callable[[str], Job]) -> None:
    callbacks = _callbacks(database, claimed, FakeClock())
    callbacks.on_stage("training_teacher")
    assert read_job(claimed.id).stage == "training_teacher"
    assert callbacks.stage == "training_teacher"


def test_progress_is_written_at_most_once_per_interval(
    database: Database, claimed: Job, read_job: Callable[[str], Job]
) -> None:
    clock = FakeClock()
    callbacks = _callbacks(database, claimed, clock)

    callbacks.on_progress(_progress(1, 1))
    written = read_job(claimed.id).progress
    assert written == {
        "stage": "distilling", "epoch": 1, "total_epochs": 3, "step": 1, "total_steps": 10,
        "fraction": 0.1, "metrics": {"loss": 0.5},
    }  # fmt: skip

    clock.now += 0.5
    callbacks.on_progress(_progress(1, 2))
    assert read_job(claimed.id).progress["step"] == 1  # throttled

    clock.now += 0.6
    callbacks.on_progress(_progress(1, 3))
    job = read_job(claimed.id)
    assert job.progress["step"] == 3
    assert job.stage == "distilling"


def test_non_finite_metrics_are_stored_as_null(
    database: Database, claimed: Job, read_job: Callable[[str], Job]
) -> None:
    callbacks = _callbacks(database, claimed, FakeClock())
    callbacks.on_progress(_progress(1, 1, loss=math.nan))
    assert read_job(claimed.id).progress["metrics"] == {"loss": None}
    assert json_safe({"a": [math.inf, 1.5], "b": -math.inf}) == {"a": [None, 1.5], "b": None}


def test_cancel_request_is_seen_within_one_poll_interval(database: Database, claimed: Job) -> None:
    clock = FakeClock()
    callbacks = _callbacks(database, claimed, clock)
    assert callbacks.should_cancel() is False

    with database.sessions() as session:
        assert repository.request_cancel(session, claimed.id).status == JobStatus.cancelling.value
    clock.now += CANCEL_POLL_S / 2
    assert callbacks.should_cancel() is False  # not polled again yet: the engine asks after every step
    clock.now += CANCEL_POLL_S
    assert callbacks.should_cancel() is True
    assert callbacks.cancel_requested and not callbacks.lost and not callbacks.interrupted


def test_a_requeued_job_is_lost_and_stops_without_cancelling(database: Database, claimed: Job) -> None:
    clock = FakeClock()
    callbacks = _callbacks(database, claimed, clock)
    with database.sessions() as session:
        future = datetime.now(timezone.utc) + timedelta(seconds=60)
        assert repository.requeue_stale_jobs(session, stale_before=future, max_attempts=3) == [claimed.id]

    callbacks.on_progress(_progress(1, 1))  # the heartbeat write finds another owner
    assert callbacks.lost
    clock.now += CANCEL_POLL_S
    assert callbacks.should_cancel() is True
    assert not callbacks.cancel_requested


def test_worker_shutdown_interrupts_the_run(database: Database, claimed: Job) -> None:
    shutdown = threading.Event()
    callbacks = _callbacks(database, claimed, FakeClock(), shutdown=shutdown)
    assert callbacks.should_cancel() is False
    shutdown.set()
    assert callbacks.should_cancel() is True
    assert callbacks.interrupted and not callbacks.cancel_requested
