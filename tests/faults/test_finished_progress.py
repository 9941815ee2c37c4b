"""A succeeded job's progress reads finished: its last epoch and step, fraction 1.0 - whatever the last
throttled progress write said (here: epoch 0 of a stage that had just begun)."""

from __future__ import annotations

from store import repository
from store.db import Database
from store.models import JobStatus
from tests.store.support import make_job


def test_a_succeeded_job_shows_its_last_epoch_and_step(database: Database) -> None:
    with database.sessions() as session:
        job = make_job(session)
        assert repository.claim_job(session, job.id, "worker-1", max_attempts=3) is not None
        started = {"stage": "distilling", "epoch": 0, "total_epochs": 3, "step": 0, "total_steps": 23,
                   "fraction": 0.97, "metrics": {"loss": 0.4}}
        repository.heartbeat(session, job.id, "worker-1", stage="distilling", progress=started)

        done = repository.finish_job(session, job.id, "worker-1", JobStatus.succeeded, metrics={"student_accuracy": 1})

    assert done.progress == {**started, "epoch": 3, "step": 23, "fraction": 1.0}
