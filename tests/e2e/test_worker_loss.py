"""A worker killed mid-distillation: the sweeper re-queues its job and a new worker resumes it."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.checks import assert_downloads_reproduce_metrics
from tests.e2e.conftest import TERMINAL, Stack, wait_until
from tests.worker.jobspecs import tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.redis]

STUDENT_EPOCHS = 6


def test_killed_worker_job_resumes_from_its_checkpoint_on_a_new_worker(
    sqlite_url: str, stacks: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = stacks(sqlite_url)
    first = stack.start()
    created = stack.post_job(tiny_spec(teacher_epochs=1, student_epochs=STUDENT_EPOCHS, shots_per_class=20))
    job_id = created["id"]

    def second_distillation_epoch_running() -> bool:
        job = stack.get_job(job_id)
        assert job["status"] not in TERMINAL, f"finished before the kill: {job}"
        return job["stage"] == "distilling" and (job["progress"] or {}).get("epoch", 0) >= 2

    # Progress reports epoch 2 only after epoch 1 ended, and the engine checkpoints at every epoch end.
    wait_until(second_distillation_epoch_running, 180, "the second distillation epoch", interval_s=0.05)
    teacher_file = stack.home / "jobs" / job_id / "teacher.safetensors"
    teacher_before = teacher_file.stat().st_mtime_ns if teacher_file.exists() else None
    first.stop(signal.SIGKILL)

    assert stack.get_job(job_id)["status"] == "running"  # nobody told the row: only the heartbeat stops
    second = stack.start_worker()
    final = stack.wait_for_status(job_id, TERMINAL, timeout_s=180)

    assert final["status"] == "succeeded", f"{final}\n{stack.logs()}"
    assert final["attempts"] == 2
    assert stack.row(job_id).worker_id.endswith(f"-{second.pid}")

    resumed_log = second.log()
    assert f"[job={job_id}]" in resumed_log and "claimed by" in resumed_log
    assert "training_teacher epoch" not in resumed_log  # the teacher was not trained again
    assert "distilling: resuming after epoch" in resumed_log  # distillation continued from its checkpoint
    resumed_after = int(resumed_log.split("distilling: resuming after epoch", 1)[1].split()[0])
    assert 1 <= resumed_after < STUDENT_EPOCHS
    if teacher_before is not None:
        assert teacher_file.stat().st_mtime_ns == teacher_before

    metrics = assert_downloads_reproduce_metrics(stack.client, final, tmp_path / "download")
    # One history entry per epoch (and epoch 0, before any step), none repeated: the epochs before the kill were
    # kept, not redone.
    assert [entry["epoch"] for entry in metrics["history"]["student"]] == list(range(0, STUDENT_EPOCHS + 1))


def test_sigterm_makes_the_running_job_yield_and_the_next_worker_resumes_it(
    sqlite_url: str, stacks: Callable[..., Stack]
) -> None:
    stack = stacks(sqlite_url)
    first = stack.start()
    job_id = stack.post_job(tiny_spec(teacher_epochs=1, student_epochs=STUDENT_EPOCHS, shots_per_class=20))["id"]
    wait_until(
        lambda: (job := stack.get_job(job_id))["stage"] == "distilling" and (job["progress"] or {}).get("epoch", 0) >= 2,
        180, "the second distillation epoch", interval_s=0.05,
    )  # fmt: skip

    stopped_at = time.monotonic()
    assert first.stop(signal.SIGTERM, timeout_s=30) == 0  # a warm shutdown ...
    assert time.monotonic() - stopped_at < 15  # ... that did not wait for the job to finish
    assert "stopped by worker shutdown; re-queued" in first.log()
    handed_back = stack.get_job(job_id)
    assert handed_back["status"] == "queued"  # at once, not after the stale timeout
    assert handed_back["attempts"] == 0  # a shutdown is not a failed attempt

    second = stack.start_worker()
    final = stack.wait_for_status(job_id, TERMINAL, timeout_s=180)
    assert final["status"] == "succeeded", f"{final}\n{stack.logs()}"
    assert final["attempts"] == 1
    assert "distilling: resuming after epoch" in second.log()
