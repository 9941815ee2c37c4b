"""Jobs over HTTP: create (commit, then enqueue), read, list with cursor pages, idempotency, cancel."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from core.spec import JobSpec
from store import repository
from store.db import Database
from store.models import JobStatus
from store.settings import Settings
from tests.api.support import digits_spec, queued_messages


def test_create_job_returns_201_with_the_validated_spec_and_enqueues_one_message(
    client: TestClient, app_settings: Settings
) -> None:
    response = client.post("/v1/jobs", json=digits_spec())

    assert response.status_code == 201
    job = response.json()
    assert job["id"].startswith("job_")
    assert job["status"] == "queued" and job["attempts"] == 0 and job["artifacts"] == []
    # Stored as validated: defaults filled in, identical to what the CLI would run.
    assert job["spec"] == JobSpec.model_validate(digits_spec()).model_dump(mode="json")
    messages = queued_messages(app_settings)
    assert len(messages) == 1
    assert job["id"].encode() in messages[0].read_bytes()


def test_get_job_returns_state_progress_and_spec(client: TestClient, db: Database) -> None:
    job_id = client.post("/v1/jobs", json=digits_spec()).json()["id"]
    with db.session() as session:
        repository.claim_job(session, job_id, "worker-1", max_attempts=3)
        repository.heartbeat(session, job_id, "worker-1", stage="distilling", progress={
            "stage": "distilling", "epoch": 1, "total_epochs": 2, "step": 3, "total_steps": 10, "fraction": 0.4,
            "metrics": {"loss": 0.5}})

    body = client.get(f"/v1/jobs/{job_id}").json()

    assert body["status"] == "running" and body["stage"] == "distilling" and body["attempts"] == 1
    assert body["progress"] == {"epoch": 1, "total_epochs": 2, "step": 3, "total_steps": 10, "fraction": 0.4,
                                "metrics": {"loss": 0.5}}
    assert body["started_at"] is not None and body["finished_at"] is None
    assert body["created_at"].endswith("Z") or body["created_at"].endswith("+00:00")


def test_failed_job_shows_its_error_code_message_field_and_where(client: TestClient, db: Database) -> None:
    job_id = client.post("/v1/jobs", json=digits_spec()).json()["id"]
    with db.session() as session:
        repository.claim_job(session, job_id, "worker-1", max_attempts=3)
        repository.finish_job(session, job_id, "worker-1", JobStatus.failed, error=repository.JobError(
            code="invalid_dataset", message="one class only", field="dataset", where="preparing_data"))

    body = client.get(f"/v1/jobs/{job_id}").json()

    assert body["status"] == "failed"
    assert body["error"] == {"code": "invalid_dataset", "message": "one class only", "field": "dataset",
                             "where": "preparing_data"}


def test_unknown_job_is_404_job_not_found(client: TestClient) -> None:
    response = client.get("/v1/jobs/job_doesnotexist")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"


def test_list_pages_newest_first_with_an_opaque_cursor(client: TestClient) -> None:
    created = [client.post("/v1/jobs", json=digits_spec(f"job-{i}")).json()["id"] for i in range(5)]

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params).json()
        seen += [job["id"] for job in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert pages == 3
    assert seen == list(reversed(created))


def test_list_filters_by_status(client: TestClient) -> None:
    first = client.post("/v1/jobs", json=digits_spec("a")).json()["id"]
    second = client.post("/v1/jobs", json=digits_spec("b")).json()["id"]
    client.post(f"/v1/jobs/{first}/cancel")

    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}).json()["items"]
    queued = client.get("/v1/jobs", params={"status": "queued"}).json()["items"]

    assert [job["id"] for job in cancelled] == [first]
    assert [job["id"] for job in queued] == [second]


@pytest.mark.parametrize(
    ("params", "field", "code"),
    [
        ({"status": "sleeping"}, "status", "validation_error"),
        ({"limit": 0}, "limit", "validation_error"),
        ({"limit": 101}, "limit", "validation_error"),
        ({"limit": "ten"}, "limit", "validation_error"),
        ({"cursor": "not-a-cursor"}, "cursor", "invalid_cursor"),
        ({"cursor": "bm90fGF0aW1l"}, "cursor", "invalid_cursor"),  # base64 of "not|atime"
    ],
)
def test_list_rejects_bad_query_naming_the_field(client: TestClient, params: dict, field: str, code: str) -> None:
    response = client.get("/v1/jobs", params=params)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["field"] == field


def test_idempotent_replay_returns_the_same_job_without_a_second_enqueue(
    client: TestClient, app_settings: Settings
) -> None:
    headers = {"Idempotency-Key": "submit-42"}
    first = client.post("/v1/jobs", json=digits_spec(), headers=headers)
    replay = client.post("/v1/jobs", json=digits_spec(), headers=headers)

    assert first.status_code == 201
    assert replay.status_code == 200
    assert replay.json()["id"] == first.json()["id"]
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert len(queued_messages(app_settings)) == 1
    assert len(client.get("/v1/jobs").json()["items"]) == 1


def test_idempotency_key_reused_with_another_body_is_409(client: TestClient, app_settings: Settings) -> None:
    headers = {"Idempotency-Key": "submit-43"}
    client.post("/v1/jobs", json=digits_spec("one"), headers=headers)

    response = client.post("/v1/jobs", json=digits_spec("two"), headers=headers)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_conflict"
    assert len(queued_messages(app_settings)) == 1


def test_cancel_of_a_queued_job_cancels_it_at_once(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=digits_spec()).json()["id"]

    response = client.post(f"/v1/jobs/{job_id}/cancel")

    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"


def test_cancel_of_a_running_job_asks_the_worker_to_stop(client: TestClient, db: Database) -> None:
    job_id = client.post("/v1/jobs", json=digits_spec()).json()["id"]
    with db.session() as session:
        repository.claim_job(session, job_id, "worker-1", max_attempts=3)

    response = client.post(f"/v1/jobs/{job_id}/cancel")

    assert response.status_code == 202
    assert response.json()["status"] == "cancelling"
    with db.session() as session:
        assert repository.heartbeat(session, job_id, "worker-1") == JobStatus.cancelling


@pytest.mark.parametrize("final", [JobStatus.succeeded, JobStatus.failed])
def test_cancel_of_a_finished_job_is_409_job_finished(client: TestClient, db: Database, final: JobStatus) -> None:
    job_id = client.post("/v1/jobs", json=digits_spec()).json()["id"]
    with db.session() as session:
        repository.claim_job(session, job_id, "worker-1", max_attempts=3)
        repository.finish_job(session, job_id, "worker-1", final)

    response = client.post(f"/v1/jobs/{job_id}/cancel")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "job_finished"
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == final.value


def test_cancel_of_an_unknown_job_is_404(client: TestClient) -> None:
    response = client.post("/v1/jobs/job_nope/cancel")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"


def test_job_stays_queued_and_is_accepted_when_the_broker_is_down(
    make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    # Port 1 on loopback refuses connections: a real, failing broker. The row is committed first, so the job
    # exists (and the worker's sweeper re-sends queued jobs); the client gets its job, not a 500 to retry.
    client = make_client(BROKER_URL="redis://127.0.0.1:1/0")
    client.app.state.celery.conf.broker_connection_timeout = 0.5  # type: ignore[attr-defined]
    client.app.state.celery.conf.task_publish_retry = False  # type: ignore[attr-defined]

    response = client.post("/v1/jobs", json=digits_spec())

    assert response.status_code == 201
    job_id = response.json()["id"]
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    assert any(job_id in record.getMessage() and "could not be enqueued" in record.getMessage()
               for record in caplog.records)
