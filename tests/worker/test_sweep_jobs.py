"""A sweep's teacher job on the real engine: trains once, registers its weights, releases the children."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from core.spec.sweep import expand
from store import repository
from store.db import Database
from store.models import Job, JobStatus
from store.sweeps import SweepPlan, create_sweep, get_sweep
from tests.worker.jobspecs import tiny_spec
from worker.runtime import WorkerRuntime
from worker.sweeper import Sweeper
from worker.tasks import run_job


def _sweep(database: Database) -> tuple[str, list[str]]:
    """A 2-seed sweep: (teacher job id, child ids); only the teacher is queued."""
    children = expand(tiny_spec(), {"training.seed": [0, 1]}, 64)
    with database.sessions() as session:
        sweep, _, queued = create_sweep(session, SweepPlan("s", {"grid": {}}, "student_accuracy", children), None)
        jobs = get_sweep(session, sweep.id).jobs
    teacher = [job.id for job in jobs if job.kind == "teacher"]
    assert queued == teacher and len(teacher) == 1
    return teacher[0], [job.id for job in jobs if job.kind == "distill"]


def test_teacher_job_trains_once_and_children_run_on_its_weights(
    runtime: WorkerRuntime, database: Database, read_job: Callable[[str], Job], drain_queue: Callable[[], list[str]]
) -> None:
    teacher_id, child_ids = _sweep(database)
    drain_queue()

    assert run_job(teacher_id, runtime) == "succeeded"

    teacher = read_job(teacher_id)
    assert {a.name for a in teacher.artifacts} == {"teacher.safetensors", "metrics.json"}
    assert 0.0 <= teacher.metrics["teacher_accuracy"] <= 1.0
    assert sorted(drain_queue()) == sorted(child_ids)  # released and enqueued by the worker
    model_id = repository.teacher_model_id(teacher_id)
    child = read_job(child_ids[0])
    assert child.status == JobStatus.queued.value and child.spec["teacher"]["weights"] == model_id

    assert run_job(child_ids[0], runtime) == "succeeded"
    done = read_job(child_ids[0])
    assert done.metrics["history"]["teacher"] == []  # given weights: no teacher epochs
    assert done.metrics["teacher_accuracy"] == teacher.metrics["teacher_accuracy"]
    assert "teacher.safetensors" not in {a.name for a in done.artifacts}


def test_sweeper_releases_children_a_dead_worker_left_waiting(
    runtime: WorkerRuntime, database: Database, read_job: Callable[[str], Job], drain_queue: Callable[[], list[str]]
) -> None:
    teacher_id, child_ids = _sweep(database)
    with database.sessions() as session:  # the worker finished the teacher, then died before releasing
        repository.claim_job(session, teacher_id, "gone", 3)
        repository.add_artifact(session, teacher_id, "teacher.safetensors",
                                f"jobs/{teacher_id}/teacher.safetensors", "application/octet-stream", 10)
        repository.finish_job(session, teacher_id, "gone", JobStatus.succeeded,
                              metrics={"num_classes": 10, "in_channels": 1, "weights_sha256": "0" * 64})
    drain_queue()
    sweeper = Sweeper(runtime)
    finished = read_job(teacher_id).finished_at  # the clock's zero, not the wall: a loaded CI may lag a second
    assert finished is not None
    finished = finished if finished.tzinfo else finished.replace(tzinfo=timezone.utc)
    stale = timedelta(seconds=runtime.settings.stale_after_s)

    # within the grace period the finishing worker may still release them
    assert sweeper.tick(finished + stale / 2) == []
    assert sorted(sweeper.tick(finished + stale + timedelta(seconds=1))) == sorted(child_ids)
    assert {read_job(child_id).status for child_id in child_ids} == {JobStatus.queued.value}
    assert sorted(drain_queue()) == sorted(child_ids)
