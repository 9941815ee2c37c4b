"""worker.tasks.run_job with the real engine on tiny jobs: every way a job can end, written to its row."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from store import repository
from store.artifacts import job_dir
from store.db import Database
from store.models import Job, JobStatus
from tests.worker.jobspecs import tiny_spec
from worker.runtime import WorkerRuntime
from worker.tasks import run_job


def test_successful_job_records_metrics_artifacts_and_ends_without_stage(
    runtime: WorkerRuntime, make_job: Callable[..., Job], read_job: Callable[[str], Job]
) -> None:
    job = make_job()
    assert run_job(job.id, runtime) == "succeeded"

    done = read_job(job.id)
    assert done.status == JobStatus.succeeded.value
    assert done.stage is None and done.error_code is None
    assert done.attempts == 1 and done.worker_id == runtime.worker_id
    assert 0.0 <= done.metrics["student_accuracy"] <= 1.0
    assert [e["epoch"] for e in done.metrics["history"]["student"][:2]] == [0, 1]  # epoch 0: before any step
    assert done.progress["fraction"] == 1.0  # complete, whatever the last throttled write said
    assert done.progress["epoch"] >= 1  # progress was written while it ran
    names = {artifact.name for artifact in done.artifacts}
    assert {"student.safetensors", "teacher.safetensors", "metrics.json"} <= names
    assert any(name.startswith("heatmaps/") for name in names)
    assert (job_dir(runtime.settings, job.id) / "student.safetensors").is_file()


def test_second_delivery_of_a_finished_job_does_nothing(
    runtime: WorkerRuntime, make_job: Callable[..., Job], read_job: Callable[[str], Job]
) -> None:
    job = make_job()
    assert run_job(job.id, runtime) == "succeeded"
    finished_at = read_job(job.id).finished_at
    assert run_job(job.id, runtime) == "skipped"
    again = read_job(job.id)
    assert again.attempts == 1 and again.finished_at == finished_at


def test_unknown_job_id_is_skipped(runtime: WorkerRuntime) -> None:
    assert run_job("job_doesnotexist", runtime) == "skipped"


def test_user_error_fails_with_code_field_and_stage(
    runtime: WorkerRuntime, make_job: Callable[..., Job], read_job: Callable[[str], Job]
) -> None:
    job = make_job(tiny_spec(dataset={"name": None, "id": "ds_vanished"}))
    assert run_job(job.id, runtime) == "failed"
    failed = read_job(job.id)
    assert failed.status == JobStatus.failed.value
    assert (failed.error_code, failed.error_field, failed.error_where) == ("invalid_dataset", "dataset.id",
                                                                          "preparing_data")
    assert "ds_vanished" in failed.error_message


def test_unexpected_exception_fails_as_internal_error_not_running(
    runtime: WorkerRuntime, make_job: Callable[..., Job], read_job: Callable[[str], Job]
) -> None:
    job = make_job()
    folder = job_dir(runtime.settings, job.id)
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_text("a file where the job folder should be")  # the engine cannot create its out folder
    assert run_job(job.id, runtime) == "failed"
    failed = read_job(job.id)
    assert failed.status == JobStatus.failed.value
    assert failed.error_code == "internal_error"
    assert "FileExistsError" in failed.error_message
    assert "Traceback" not in failed.error_message  # the traceback goes to the log only


def _run_until_distilling(
    runtime: WorkerRuntime, job_id: str, read_job: Callable[[str], Job]
) -> tuple[threading.Thread, list[str]]:
    """Run the job on a thread and return once it is distilling; `outcome` gets run_job's result."""
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(run_job(job_id, runtime)))
    thread.start()
    deadline = time.monotonic() + 120
    while read_job(job_id).stage != "distilling" and time.monotonic() < deadline:
        time.sleep(0.05)
    return thread, outcome


def test_cancel_during_distillation_ends_cancelled(
    runtime: WorkerRuntime, database: Database, make_job: Callable[..., Job], read_job: Callable[[str], Job]
) -> None:
    job = make_job(tiny_spec(student_epochs=200))
    thread, outcome = _run_until_distilling(runtime, job.id, read_job)
    with database.sessions() as session:
        repository.request_cancel(session, job.id)
    thread.join(timeout=30)

    assert outcome == ["cancelled"]
    cancelled = read_job(job.id)
    assert cancelled.status == JobStatus.cancelled.value
    assert cancelled.stage is None and cancelled.finished_at is not None


def test_worker_shutdown_hands_the_job_back_to_the_queue_at_once(
    runtime: WorkerRuntime, make_job: Callable[..., Job], read_job: Callable[[str], Job]
) -> None:
    job = make_job(tiny_spec(student_epochs=200))
    thread, outcome = _run_until_distilling(runtime, job.id, read_job)
    runtime.shutdown.set()
    thread.join(timeout=30)

    assert outcome == ["released"]
    left = read_job(job.id)
    assert left.status == JobStatus.queued.value  # re-queued at once, for the next worker to resume
    assert left.attempts == 0 and left.worker_id is None  # a shutdown is not a failed attempt
    assert left.finished_at is None
