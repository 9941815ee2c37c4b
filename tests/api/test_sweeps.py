"""POST/GET /v1/sweeps: validation up front, one shared teacher, waiting children, leaderboard, cancel, SSE."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from store import repository
from store.db import Database
from store.models import JobStatus, utcnow
from store.settings import Settings
from tests.api.support import digits_spec, queued_messages, weights_bytes

GRID = {"method": ["kd", "e2kd"], "training.seed": [0, 1]}


def sweep_body(**changes: Any) -> dict[str, Any]:
    return {"name": "methods", "base": digits_spec(), "grid": GRID, "rank_by": "student_accuracy", **changes}


def _finish(db: Database, job_id: str, metrics: dict[str, Any], artifact: tuple[str, int] | None = None) -> None:
    """Move a job through claim -> succeeded as a worker would."""
    with db.sessions() as session:
        repository.claim_job(session, job_id, "w1", 3)
        if artifact is not None:
            repository.add_artifact(session, job_id, artifact[0], f"jobs/{job_id}/{artifact[0]}",
                                    "application/octet-stream", artifact[1])
        repository.finish_job(session, job_id, "w1", JobStatus.succeeded, metrics=metrics)


def test_a_sweep_queues_one_teacher_and_its_children_wait_for_it(client: TestClient, app_settings: Settings) -> None:
    response = client.post("/v1/sweeps", json=sweep_body())

    assert response.status_code == 201, response.text
    sweep = response.json()
    assert [job["overrides"] for job in sweep["jobs"]] == [
        {"method": "kd", "training.seed": 0}, {"method": "kd", "training.seed": 1},
        {"method": "e2kd", "training.seed": 0}, {"method": "e2kd", "training.seed": 1},
    ]  # fmt: skip
    assert {job["status"] for job in sweep["jobs"]} == {"waiting"}
    assert [(job["kind"], job["status"]) for job in sweep["teacher_jobs"]] == [("teacher", "queued")]
    assert sweep["status"] == "queued" and sweep["counts"] == {"waiting": 4}
    assert len(queued_messages(app_settings)) == 1  # only the teacher is enqueued
    assert [row["config"] for row in sweep["leaderboard"]] == [{"method": "kd"}, {"method": "e2kd"}]
    child = client.get(sweep["jobs"][0]["url"]).json()
    assert child["spec"]["method"] == "kd" and child["spec"]["training"]["seed"] == 0


def test_children_given_teacher_weights_are_queued_at_once(client: TestClient, tmp_path: Path) -> None:
    model = client.post("/v1/models", files={"file": ("t.safetensors", weights_bytes(tmp_path, "cnn", 10, 1))},
                        data={"arch": "cnn", "num_classes": "10", "in_channels": "1"}).json()
    base = digits_spec(teacher={"arch": "cnn", "weights": model["id"]})

    sweep = client.post("/v1/sweeps", json=sweep_body(base=base)).json()

    assert sweep["teacher_jobs"] == [] and sweep["counts"] == {"queued": 4}


@pytest.mark.parametrize(
    ("grid", "code", "field", "in_message"),
    [
        ({"training.lr": [0.1, -1.0]}, "invalid_sweep", "grid.training.lr", "combination 1 {\"training.lr\": -1.0}"),
        ({"trainng.seed": [0]}, "invalid_sweep", "grid.trainng.seed", "trainng"),
        ({"method": ["kd", "nope"]}, "invalid_sweep", "grid.method", "combination 1"),
        ({"method": []}, "invalid_sweep", "grid.method", "non-empty list"),
        ({}, "invalid_sweep", "grid", "empty"),
        ({"dataset.name": ["digits", "mnist"]}, "unknown_dataset", "grid.dataset.name", "combination 1"),
    ],
)
def test_a_bad_grid_is_refused_naming_its_path_and_combination(
    client: TestClient, db: Database, grid: dict[str, Any], code: str, field: str, in_message: str
) -> None:
    response = client.post("/v1/sweeps", json=sweep_body(grid=grid))

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == (code, field)
    assert in_message in error["message"]
    assert client.get("/v1/jobs").json()["items"] == []  # nothing was created


def test_the_child_limit_is_a_setting(make_client: Callable[..., TestClient]) -> None:
    client = make_client(DISTILL_SWEEP_MAX_CHILDREN=3)
    response = client.post("/v1/sweeps", json=sweep_body())
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "too_many_children" and "4 children" in response.json()["error"]["message"]


def test_idempotency_key_replays_the_sweep_and_refuses_another_body(client: TestClient, app_settings: Settings) -> None:
    headers = {"Idempotency-Key": "sweep-1"}
    first = client.post("/v1/sweeps", json=sweep_body(), headers=headers)
    again = client.post("/v1/sweeps", json=sweep_body(), headers=headers)
    other = client.post("/v1/sweeps", json=sweep_body(rank_by="ece"), headers=headers)

    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)
    assert again.json()["id"] == first.json()["id"]
    assert len(client.get("/v1/jobs").json()["items"]) == 5 and len(queued_messages(app_settings)) == 1


def test_teacher_success_queues_children_with_its_weights_and_the_leaderboard_averages_seeds(
    client: TestClient, db: Database
) -> None:
    sweep = client.post("/v1/sweeps", json=sweep_body()).json()
    teacher_id = sweep["teacher_jobs"][0]["id"]
    _finish(db, teacher_id, {"teacher_accuracy": 0.9, "num_classes": 10, "in_channels": 1, "weights_sha256": "ab" * 32},
            artifact=("teacher.safetensors", 123))
    with db.sessions() as session:
        queued = repository.release_dependents(session, teacher_id)
    assert len(queued) == 4
    model_id = repository.teacher_model_id(teacher_id)
    assert client.get(f"/v1/models/{model_id}").json()["arch"] == "cnn"
    accuracy = {("kd", 0): 0.80, ("kd", 1): 0.90, ("e2kd", 0): 0.95, ("e2kd", 1): 0.93}
    for job in sweep["jobs"]:
        assert client.get(job["url"]).json()["spec"]["teacher"]["weights"] == model_id
        key = (job["overrides"]["method"], job["overrides"]["training.seed"])
        _finish(db, job["id"], {"student_accuracy": accuracy[key], "agreement": 0.9, "explanation_cosine": 0.8,
                                "ece": 0.05, "student_latency_ms": 1.0})

    done = client.get(f"/v1/sweeps/{sweep['id']}").json()

    assert done["status"] == "succeeded"
    board = done["leaderboard"]
    assert [(row["rank"], row["config"], row["seeds"]) for row in board] == [
        (1, {"method": "e2kd"}, [0, 1]), (2, {"method": "kd"}, [0, 1]),
    ]  # fmt: skip
    assert board[0]["metrics"]["student_accuracy"]["mean"] == pytest.approx(0.94)
    assert board[0]["metrics"]["student_accuracy"]["std"] == pytest.approx(0.0141421, rel=1e-4)
    assert board[1]["metrics"]["latency_ms"] == {"mean": 1.0, "std": 0.0}
    rows = list(csv.DictReader(io.StringIO(client.get(done["links"]["leaderboard_csv"]).text)))
    assert [(row["rank"], json.loads(row["config"])["method"]) for row in rows] == [("1", "e2kd"), ("2", "kd")]
    assert float(rows[1]["student_accuracy_mean"]) == pytest.approx(0.85)
    page = client.get(done["links"]["report"])
    assert page.headers["content-type"].startswith("text/html")
    assert "0.9400 ± 0.0141" in page.text and "<script" not in page.text


def test_a_failed_teacher_fails_its_waiting_children(client: TestClient, db: Database) -> None:
    sweep = client.post("/v1/sweeps", json=sweep_body()).json()
    teacher_id = sweep["teacher_jobs"][0]["id"]
    with db.sessions() as session:
        repository.claim_job(session, teacher_id, "w1", 3)
        repository.finish_job(session, teacher_id, "w1", JobStatus.failed,
                              error=repository.JobError("internal_error", "boom", None, "training_teacher"))
        assert repository.settle_waiting(session, finished_before=utcnow() + timedelta(seconds=1)) == []

    failed = client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert failed["status"] == "failed"
    assert {(job["status"], job["error_code"]) for job in failed["jobs"]} == {("failed", "teacher_failed")}


def test_cancel_cancels_every_unfinished_job_and_the_stream_ends(client: TestClient, db: Database) -> None:
    sweep = client.post("/v1/sweeps", json=sweep_body()).json()
    _finish(db, sweep["teacher_jobs"][0]["id"], {"num_classes": 10, "in_channels": 1, "weights_sha256": "0" * 64},
            artifact=("teacher.safetensors", 1))
    with db.sessions() as session:
        first_child = repository.release_dependents(session, sweep["teacher_jobs"][0]["id"])[0]
    _finish(db, first_child, {"student_accuracy": 0.5})

    cancelled = client.post(f"/v1/sweeps/{sweep['id']}/cancel")

    assert cancelled.status_code == 202
    statuses = [job["status"] for job in cancelled.json()["jobs"]]
    assert statuses == ["succeeded", "cancelled", "cancelled", "cancelled"]
    assert cancelled.json()["status"] == "cancelled"
    with client.stream("GET", f"/v1/sweeps/{sweep['id']}/events") as stream:
        lines = [line for line in stream.iter_lines() if line.startswith("event:")]
    assert lines.count("event: job") == 5 and lines[-1] == "event: sweep"


def test_sweeps_page_newest_first_and_unknown_ids_are_404(client: TestClient) -> None:
    ids = [client.post("/v1/sweeps", json=sweep_body(name=f"s{i}")).json()["id"] for i in range(3)]

    first = client.get("/v1/sweeps", params={"limit": 2}).json()
    second = client.get("/v1/sweeps", params={"limit": 2, "cursor": first["next_cursor"]}).json()

    assert [item["id"] for item in first["items"] + second["items"]] == ids[::-1]
    assert second["next_cursor"] is None and first["items"][0]["children"] == 4
    assert client.get("/v1/sweeps/swp_nope").json()["error"]["code"] == "sweep_not_found"
    assert client.get("/v1/sweeps", params={"cursor": "zzz"}).json()["error"]["code"] == "invalid_cursor"


def test_a_sweep_and_its_jobs_belong_to_the_key_that_created_it(make_client: Callable[..., TestClient]) -> None:
    alice, bob = {"Authorization": "Bearer alice-key"}, {"Authorization": "Bearer bob-key"}
    client = make_client(DISTILL_API_KEYS="alice-key,bob-key", DISTILL_KEY_HASH_SECRET="test-secret")
    sweep = client.post("/v1/sweeps", json=sweep_body(), headers={**alice, "Idempotency-Key": "k"}).json()

    assert client.get(f"/v1/sweeps/{sweep['id']}", headers=alice).status_code == 200
    for path in ("", "/leaderboard.csv", "/report", "/events"):
        response = client.get(f"/v1/sweeps/{sweep['id']}{path}", headers=bob)
        assert response.status_code == 404 and response.json()["error"]["code"] == "sweep_not_found", path
    assert client.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=bob).status_code == 404
    assert client.get("/v1/sweeps", headers=bob).json()["items"] == []
    assert client.get(sweep["jobs"][0]["url"], headers=bob).status_code == 404  # the children are hers too
    assert client.get(sweep["teacher_jobs"][0]["url"], headers=alice).status_code == 200
    # Idempotency keys are per owner: Bob's "k" makes his own sweep.
    assert client.post("/v1/sweeps", json=sweep_body(), headers={**bob, "Idempotency-Key": "k"}).status_code == 201
