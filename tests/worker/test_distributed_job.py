"""A job on two gloo ranks through the worker's task: a rank killed mid-epoch, then the job's retry resumes it."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import pytest

from store.models import Job, JobStatus
from tests.core.test_distributed import rank_pids
from tests.worker.jobspecs import tiny_spec
from worker.runtime import WorkerRuntime
from worker.tasks import run_job


def _kill_a_rank_mid_epoch(job_id: str, read_job: Callable[[str], Job], killed: list[int]) -> None:
    """Watch the row's progress; in the second distilling epoch (the first one's checkpoint is saved) kill a rank."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        progress = read_job(job_id).progress or {}
        if progress.get("stage") == "distilling" and progress.get("epoch", 0) >= 2 and progress.get("step", 0) >= 2:
            pids = rank_pids()
            if pids:
                os.kill(pids[-1], signal.SIGKILL)
                killed.append(pids[-1])
            return
        time.sleep(0.05)


def test_a_killed_rank_requeues_the_job_and_the_next_attempt_resumes_and_succeeds(
    runtime: WorkerRuntime, make_job: Callable[..., Job], read_job: Callable[[str], Job],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DISTILL_TORCH_THREADS", "1")
    monkeypatch.setenv("DISTILL_COLLECTIVE_TIMEOUT_S", "30")
    job = make_job(tiny_spec(student_epochs=3, shots_per_class=20, training={"devices": 2, "lr": 0.01},
                             report={"heatmaps": 0, "latency_runs": 1}))
    killed: list[int] = []
    watcher = threading.Thread(target=_kill_a_rank_mid_epoch, args=(job.id, read_job, killed))
    watcher.start()
    assert run_job(job.id, runtime) == "released"  # the task runs in the main thread, as in a worker
    watcher.join()
    assert killed
    left = read_job(job.id)
    assert left.status == JobStatus.queued.value and left.attempts == 1  # the failed attempt counts

    assert run_job(job.id, runtime) == "succeeded"
    done = read_job(job.id)
    assert done.attempts == 2
    assert [entry["epoch"] for entry in done.metrics["history"]["student"]] == [0, 1, 2, 3]
    assert done.metrics["spec"]["training"]["devices"] == 2
