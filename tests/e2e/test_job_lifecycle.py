"""A job's life through the real API, a real Redis broker and a real Celery worker process."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from store.queue import enqueue_job, make_celery
from tests.e2e.checks import (
    assert_downloads_reproduce_metrics,
    assert_event_stream_of_a_successful_job,
    assert_shipped_outputs_are_served,
    squeeze,
)
from tests.e2e.conftest import TERMINAL, EventCollector, Stack, wait_until
from tests.worker.jobspecs import tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def _watch_until_finished(stack: Stack, created: dict, timeout_s: float = 180) -> tuple[dict, list[str]]:
    """Poll GET /v1/jobs/{id} (like a client would) and return the final job and the statuses seen."""
    seen = [created["status"]]

    def finished() -> dict | None:
        job = stack.get_job(created["id"])
        seen.append(job["status"])
        return job if job["status"] in TERMINAL else None

    final = wait_until(finished, timeout_s, f"job {created['id']} to finish", interval_s=0.1)
    return final, squeeze(seen)


def test_job_goes_queued_running_succeeded_and_its_student_reproduces_its_accuracy(
    db_url: str, stacks: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = stacks(db_url)
    stack.start()

    # The one service job here that ships everything: student.onnx, report.html, the model card.
    created = stack.post_job(tiny_spec(teacher_epochs=1, student_epochs=2, shots_per_class=20, export={"onnx": True}))
    assert created["status"] == "queued"
    with httpx.Client(base_url=stack.client.base_url) as stream_client:
        collector = EventCollector(stream_client, created["id"])
        collector.start()
        final, seen = _watch_until_finished(stack, created)
        events = collector.result()

    assert final["status"] == "succeeded", f"{final}\n{stack.logs()}"
    assert seen == ["queued", "running", "succeeded"]
    assert final["attempts"] == 1 and final["error"] is None and final["stage"] is None
    assert_event_stream_of_a_successful_job(events)
    assert_downloads_reproduce_metrics(stack.client, final, tmp_path / "download")
    assert_shipped_outputs_are_served(stack.client, final)


def test_cancelled_job_stops_within_ten_seconds_and_the_worker_takes_the_next_job(
    sqlite_url: str, stacks: Callable[..., Stack]
) -> None:
    stack = stacks(sqlite_url)
    worker = stack.start()

    long_job = stack.post_job(tiny_spec(teacher_epochs=1, student_epochs=500, shots_per_class=20))
    wait_until(lambda: stack.get_job(long_job["id"])["stage"] == "distilling", 120, "distillation to start")
    cancel_sent = time.monotonic()
    response = stack.client.post(f"/v1/jobs/{long_job['id']}/cancel")
    assert response.status_code == 202, response.text
    assert response.json()["status"] in ("cancelling", "cancelled")
    cancelled = stack.wait_for_status(long_job["id"], TERMINAL, timeout_s=10)
    assert cancelled["status"] == "cancelled"
    assert time.monotonic() - cancel_sent < 10
    assert cancelled["error"] is None

    next_job = stack.post_job(tiny_spec())
    done = stack.wait_for_status(next_job["id"], TERMINAL)
    assert done["status"] == "succeeded", stack.logs()
    assert worker.alive()
    assert stack.row(next_job["id"]).worker_id == stack.row(long_job["id"]).worker_id


def test_duplicate_delivery_runs_job_once(sqlite_url: str, stacks: Callable[..., Stack]) -> None:
    stack = stacks(sqlite_url)
    # A duplicate that arrives while the job's heartbeat is late counts as an orphan's retry (tested in
    # test_worker_loss.py and tests/worker); here the heartbeat must not go stale on a loaded machine, so duplicates only meet a live run.
    stack.env["DISTILL_STALE_AFTER_S"] = "60"
    worker = stack.start()

    created = stack.post_job(tiny_spec())  # the API sends the first message
    celery = make_celery(stack.settings)
    enqueue_job(created["id"], celery)  # and the same job id twice more
    enqueue_job(created["id"], celery)

    final = stack.wait_for_status(created["id"], TERMINAL)
    assert final["status"] == "succeeded", stack.logs()
    wait_until(lambda: worker.log().count("nothing to do") >= 2, 60, "both duplicates to be consumed")
    assert final["attempts"] == 1
    assert worker.log().count(f"[job={created['id']}] worker.tasks: claimed by") == 1
    assert stack.get_job(created["id"])["status"] == "succeeded"
