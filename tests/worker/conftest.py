"""Worker pieces against a real, migrated database (SQLite and PostgreSQL via `db_url`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from kombu import Queue

from store import repository
from store.db import Database
from store.models import Job
from store.queue import QUEUE_NAME, make_celery
from store.settings import Settings
from tests.worker.jobspecs import tiny_spec
from worker.runtime import WorkerRuntime

WORKER_ID = "test-host-1"


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def worker_settings(settings: Callable[..., Settings]) -> Settings:
    """Fast clocks (the e2e values) and the embedded filesystem broker under the test's DISTILL_HOME."""
    return settings(
        DISTILL_HEARTBEAT_S=0.2, DISTILL_STALE_AFTER_S=1.0, DISTILL_PROGRESS_INTERVAL_S=0.0, DISTILL_MAX_ATTEMPTS=2
    )


@pytest.fixture
def runtime(worker_settings: Settings, database: Database) -> WorkerRuntime:
    return WorkerRuntime(
        settings=worker_settings,
        sessions=database.sessions,
        worker_id=WORKER_ID,
        celery=make_celery(worker_settings),
    )


@pytest.fixture
def make_job(database: Database) -> Callable[..., Job]:
    def make(spec: dict[str, Any] | None = None) -> Job:
        spec = spec or tiny_spec()
        with database.sessions() as session:
            job, created = repository.create_job(session, spec, spec.get("name", "job"))
        assert created
        return job

    return make


@pytest.fixture
def read_job(database: Database) -> Callable[[str], Job]:
    def read(job_id: str) -> Job:
        with database.sessions() as session:
            return repository.get_job(session, job_id)

    return read


@pytest.fixture
def drain_queue(runtime: WorkerRuntime) -> Callable[[], list[str]]:
    """Consume every message waiting in the broker's queue; returns the job id each one names."""

    def drain() -> list[str]:
        job_ids: list[str] = []
        with runtime.celery.connection_for_read() as connection:
            queue = Queue(QUEUE_NAME)(connection.default_channel)
            while (message := queue.get(no_ack=True)) is not None:
                assert message.headers["task"] == "distill.run_job"
                args, _kwargs, _embed = message.payload
                job_ids.append(args[0])
        return job_ids

    return drain
