"""A sweep of 2 methods x 2 seeds on digits, run by 2 worker processes: the teacher is trained once, the
four children reuse it, and the leaderboard has one row per method with mean ± std over the two seeds."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

import pytest

from tests.e2e.conftest import Stack, wait_until
from tests.worker.jobspecs import tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def test_two_methods_two_seeds_on_two_workers_share_one_teacher(
    sqlite_url: str, stacks: Callable[..., Stack]
) -> None:
    stack = stacks(sqlite_url)
    stack.start_api(wait=False)
    workers = [stack.start_worker(), stack.start_worker()]
    wait_until(stack._api_up, 90, "the API")
    body = {"base": tiny_spec(teacher_epochs=2, student_epochs=1), "rank_by": "student_accuracy",
            "grid": {"method": ["kd", "e2kd"], "training.seed": [0, 1]}}

    created = stack.client.post("/v1/sweeps", json=body, headers={"Idempotency-Key": "e2e-sweep"})
    assert created.status_code == 201, created.text
    sweep_id = created.json()["id"]

    def finished() -> dict | None:
        sweep = stack.client.get(f"/v1/sweeps/{sweep_id}").json()
        return sweep if sweep["status"] in ("succeeded", "failed", "cancelled") else None

    try:
        sweep = wait_until(finished, 300, "the sweep to finish", interval_s=0.5)
    except AssertionError:
        raise AssertionError(stack.logs()) from None

    assert sweep["status"] == "succeeded", f"{sweep}\n{stack.logs()}"
    assert sweep["counts"] == {"succeeded": 4} and len(sweep["teacher_jobs"]) == 1
    logs = "\n".join(worker.log() for worker in workers)
    assert logs.count("worker.callbacks: stage training_teacher") == 1, logs  # trained once, by the teacher job only
    teacher_id = sweep["teacher_jobs"][0]["id"]
    assert f"[job={teacher_id}]" in logs
    model_id = "mdl_" + teacher_id.removeprefix("job_")
    for child in sweep["jobs"]:
        job = stack.get_job(child["id"])
        assert job["spec"]["teacher"]["weights"] == model_id
        assert job["metrics"]["teacher_accuracy"] == sweep["teacher_jobs"][0]["metrics"]["teacher_accuracy"]
    child_ids = [child["id"] for child in sweep["jobs"]]
    took_children = [worker.name for worker in workers
                     if any(f"[job={child_id}] worker.tasks: claimed by" in worker.log() for child_id in child_ids)]
    assert len(took_children) == 2, took_children  # both workers took children (a row keeps only the last one)

    board = sweep["leaderboard"]
    assert sorted(row["config"]["method"] for row in board) == ["e2kd", "kd"]
    for row in board:
        assert row["seeds"] == [0, 1] and row["finished"] == 2
        stats = row["metrics"]["student_accuracy"]
        assert 0.0 <= stats["mean"] <= 1.0 and stats["std"] >= 0.0
    means = [row["metrics"]["student_accuracy"]["mean"] for row in board]
    assert means == sorted(means, reverse=True)
    rows = list(csv.DictReader(io.StringIO(stack.client.get(f"/v1/sweeps/{sweep_id}/leaderboard.csv").text)))
    assert len(rows) == 2 and all(row["student_accuracy_std"] != "" for row in rows)
    again = stack.client.post("/v1/sweeps", json=body, headers={"Idempotency-Key": "e2e-sweep"})
    assert again.status_code == 200 and again.json()["id"] == sweep_id
