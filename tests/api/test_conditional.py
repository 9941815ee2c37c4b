"""Conditional GETs and the summary view: what a dashboard polling once a second relies on."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.schemas import JobOut
from store import repository
from store.db import Database
from store.models import JobStatus
from tests.api.support import digits_spec


def _running_job(client: TestClient, db: Database) -> str:
    job_id = client.post("/v1/jobs", json=digits_spec()).json()["id"]
    with db.session() as session:
        repository.claim_job(session, job_id, "worker-1", max_attempts=3)
    return job_id


def _report_progress(db: Database, job_id: str, epoch: int) -> None:
    with db.session() as session:
        repository.heartbeat(session, job_id, "worker-1", stage="distilling", progress={
            "epoch": epoch, "total_epochs": 5, "step": 1, "total_steps": 4, "fraction": epoch / 5,
            "metrics": {"loss": 1.0 / epoch}})


def test_unchanged_job_answers_304_without_body_until_it_changes_then_200_with_a_new_etag(
    client: TestClient, db: Database
) -> None:
    job_id = _running_job(client, db)
    first = client.get(f"/v1/jobs/{job_id}")
    etag = first.headers["ETag"]
    assert first.status_code == 200 and etag.startswith('"') and first.headers["Cache-Control"] == "no-cache"

    unchanged = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["ETag"] == etag and unchanged.headers["Cache-Control"] == "no-cache"

    _report_progress(db, job_id, epoch=2)
    changed = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag
    assert changed.json()["progress"]["epoch"] == 2
    # The new ETag is current in turn; a list of validators matches when any one does; W/ compares weakly.
    assert client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": f'"old", W/{changed.headers["ETag"]}'}
                      ).status_code == 304


def test_each_view_has_its_own_etag(client: TestClient, db: Database) -> None:
    job_id = _running_job(client, db)
    full = client.get(f"/v1/jobs/{job_id}").headers["ETag"]
    summary = client.get(f"/v1/jobs/{job_id}?view=summary").headers["ETag"]

    assert full != summary
    assert client.get(f"/v1/jobs/{job_id}?view=summary", headers={"If-None-Match": full}).status_code == 200
    assert client.get(f"/v1/jobs/{job_id}?view=summary", headers={"If-None-Match": summary}).status_code == 304


def test_unknown_job_is_404_even_with_if_none_match(client: TestClient) -> None:
    response = client.get("/v1/jobs/job_missing", headers={"If-None-Match": "*"})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"


def test_list_answers_304_until_a_job_on_the_page_changes_or_a_job_joins_it(client: TestClient, db: Database) -> None:
    job_id = _running_job(client, db)
    client.post("/v1/jobs", json=digits_spec("second"))
    first = client.get("/v1/jobs?limit=20")
    etag = first.headers["ETag"]
    assert first.status_code == 200 and len(first.json()["items"]) == 2

    assert client.get("/v1/jobs?limit=20", headers={"If-None-Match": etag}).status_code == 304

    _report_progress(db, job_id, epoch=3)
    after_progress = client.get("/v1/jobs?limit=20", headers={"If-None-Match": etag})
    assert after_progress.status_code == 200 and after_progress.headers["ETag"] != etag
    etag = after_progress.headers["ETag"]

    client.post("/v1/jobs", json=digits_spec("third"))
    after_new_job = client.get("/v1/jobs?limit=20", headers={"If-None-Match": etag})
    assert after_new_job.status_code == 200 and len(after_new_job.json()["items"]) == 3
    # Another page (filter) is another representation.
    assert client.get("/v1/jobs?limit=20&status=queued", headers={"If-None-Match": etag}).status_code == 200


def test_summary_view_has_state_progress_and_headline_metrics_but_no_spec_history_or_artifacts(
    client: TestClient, db: Database
) -> None:
    job_id = _running_job(client, db)
    _report_progress(db, job_id, epoch=1)
    with db.session() as session:
        repository.add_artifact(session, job_id, "metrics.json", f"jobs/{job_id}/metrics.json", "application/json", 9)
        repository.finish_job(session, job_id, "worker-1", JobStatus.succeeded, metrics={
            "student_accuracy": 0.9, "agreement": 0.95, "history": [{"epoch": 1, "loss": 0.3}]})

    summary = client.get(f"/v1/jobs/{job_id}?view=summary").json()
    full = client.get(f"/v1/jobs/{job_id}").json()

    assert set(summary) == {"id", "name", "status", "stage", "progress", "metrics", "error", "attempts",
                            "created_at", "started_at", "finished_at", "version"}
    assert summary["metrics"] == {"student_accuracy": 0.9, "agreement": 0.95}
    # a succeeded job's progress reads as finished, whatever the last heartbeat said (epoch 1 of 5)
    assert summary["status"] == "succeeded" and summary["progress"]["epoch"] == summary["progress"]["total_epochs"] == 5
    assert summary["version"] == full["version"] > 0
    assert full["metrics"]["history"] == [{"epoch": 1, "loss": 0.3}]
    assert [artifact["name"] for artifact in full["artifacts"]] == ["metrics.json"]
    assert {key: full[key] for key in summary if key != "metrics"} == {k: v for k, v in summary.items()
                                                                       if k != "metrics"}
    page = client.get("/v1/jobs?view=summary").json()
    assert page["items"] == [summary]


def test_full_view_is_the_documented_jobout_shape(client: TestClient, db: Database) -> None:
    job_id = _running_job(client, db)
    _report_progress(db, job_id, epoch=1)
    with db.session() as session:
        repository.add_artifact(session, job_id, "heatmaps/0001.png", f"jobs/{job_id}/h.png", "image/png", 5)
        job = repository.get_job(session, job_id)

    body = client.get(f"/v1/jobs/{job_id}").json()

    assert body == JobOut.from_job(job).model_dump(mode="json")
    assert client.get("/v1/jobs").json()["items"] == [body]


def test_unknown_view_is_a_422_naming_the_parameter(client: TestClient) -> None:
    response = client.get("/v1/jobs?view=tiny")

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "view"


def test_repeated_reads_never_serve_a_stale_document_after_a_change(client: TestClient, db: Database) -> None:
    job_id = _running_job(client, db)
    _report_progress(db, job_id, epoch=1)
    for _ in range(2):  # the second read of each comes from the encoded-document cache
        assert client.get(f"/v1/jobs/{job_id}").json()["progress"]["epoch"] == 1
        assert client.get("/v1/jobs?view=summary").json()["items"][0]["progress"]["epoch"] == 1
    first = client.get("/v1/jobs").json()
    assert client.get("/v1/jobs").json() == first

    _report_progress(db, job_id, epoch=4)

    assert client.get(f"/v1/jobs/{job_id}").json()["progress"]["epoch"] == 4
    assert client.get("/v1/jobs?view=summary").json()["items"][0]["progress"]["epoch"] == 4
    assert client.get("/v1/jobs").json()["items"][0]["version"] > first["items"][0]["version"]
