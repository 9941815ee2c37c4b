"""Artifacts are served by recorded name only: no client string ever becomes a path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from store import repository
from store.artifacts import job_dir, record_job_outputs
from store.db import Database
from store.settings import Settings
from tests.api.support import digits_spec, png_bytes

SECRET = b"top-secret-bytes-outside-the-artifacts"


@pytest.fixture
def job_with_outputs(client: TestClient, db: Database, app_settings: Settings) -> str:
    """A job whose folder holds what a run writes, recorded through the store as the worker does."""
    job_id = client.post("/v1/jobs", json=digits_spec()).json()["id"]
    folder = job_dir(app_settings, job_id)
    (folder / "heatmaps").mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"student_accuracy": 0.93}))
    (folder / "heatmaps" / "0001.png").write_bytes(png_bytes())
    (folder / "student.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with db.session() as session:
        record_job_outputs(session, app_settings, job_id)
    return job_id


@pytest.fixture
def secrets(app_settings: Settings) -> list[Path]:
    """Files a traversal would aim at: one beside DISTILL_HOME, one inside it but not an artifact."""
    outside = app_settings.distill_home.parent / "secret.txt"
    inside = app_settings.distill_home / "secret.txt"
    for path in (outside, inside):
        path.write_bytes(SECRET)
    return [outside, inside]


def test_job_lists_its_artifacts_with_download_urls(client: TestClient, job_with_outputs: str) -> None:
    artifacts = client.get(f"/v1/jobs/{job_with_outputs}").json()["artifacts"]

    by_name = {artifact["name"]: artifact for artifact in artifacts}
    assert set(by_name) == {"metrics.json", "heatmaps/0001.png", "student.safetensors"}
    assert by_name["heatmaps/0001.png"]["content_type"] == "image/png"
    assert by_name["heatmaps/0001.png"]["url"] == f"/v1/jobs/{job_with_outputs}/artifacts/heatmaps/0001.png"
    assert by_name["heatmaps/0001.png"]["size_bytes"] == len(png_bytes())


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("metrics.json", "application/json"), ("heatmaps/0001.png", "image/png"),
     ("student.safetensors", "application/octet-stream")],
)
def test_artifact_download_returns_the_file_with_its_content_type(
    client: TestClient, job_with_outputs: str, app_settings: Settings, name: str, content_type: str
) -> None:
    response = client.get(f"/v1/jobs/{job_with_outputs}/artifacts/{name}")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith(content_type)
    assert response.content == (job_dir(app_settings, job_with_outputs) / name).read_bytes()


@pytest.mark.parametrize(
    "raw_path",
    [
        "..%2F..%2Fsecret.txt",
        "%2E%2E/%2E%2E/secret.txt",
        "..%2Fsecret.txt",
        "heatmaps%2F..%2F..%2F..%2Fsecret.txt",
        "/%2Fetc%2Fpasswd",
        "%2F{home}%2Fsecret.txt",
        "checkpoint.pt",
        "metrics.json%00.png",
    ],
)
def test_unknown_traversing_or_absolute_names_are_404_and_read_nothing(
    client: TestClient, job_with_outputs: str, app_settings: Settings, secrets: list[Path], raw_path: str
) -> None:
    raw_path = raw_path.replace("{home}", str(app_settings.distill_home).lstrip("/").replace("/", "%2F"))

    response = client.get(f"/v1/jobs/{job_with_outputs}/artifacts/{raw_path}")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "artifact_not_found"
    assert SECRET not in response.content


def test_a_recorded_row_pointing_outside_home_is_not_served(
    client: TestClient, job_with_outputs: str, db: Database, secrets: list[Path]
) -> None:
    # A tampered row: even the server's own records cannot reach outside DISTILL_HOME.
    with db.session() as session:
        repository.add_artifact(session, job_with_outputs, "report.md", "../secret.txt", "text/markdown", 10)

    response = client.get(f"/v1/jobs/{job_with_outputs}/artifacts/report.md")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "artifact_not_found"
    assert SECRET not in response.content


def test_artifact_of_an_unknown_job_is_404_job_not_found(client: TestClient) -> None:
    response = client.get("/v1/jobs/job_missing/artifacts/metrics.json")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"


def test_report_html_is_served_as_a_page_that_may_run_no_script(
    client: TestClient, db: Database, app_settings: Settings, job_with_outputs: str
) -> None:
    folder = job_dir(app_settings, job_with_outputs)
    page = "<!DOCTYPE html><html><body><h1>report</h1></body></html>"
    (folder / "report.html").write_text(page)
    (folder / "README.md").write_text("---\nlibrary_name: pytorch\n---\n# card\n")
    (folder / "student.onnx").write_bytes(b"onnx-bytes")
    with db.session() as session:
        record_job_outputs(session, app_settings, job_with_outputs)

    response = client.get(f"/v1/jobs/{job_with_outputs}/artifacts/report.html")
    assert response.status_code == 200 and response.text == page
    assert response.headers["content-type"].startswith("text/html")
    assert "attachment" not in response.headers.get("content-disposition", "")
    policy = dict(part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";"))
    assert policy["script-src"] == "'none'" and policy["default-src"] == "'none'"
    assert "http" not in policy["img-src"]
    assert response.headers["x-content-type-options"] == "nosniff"
    card = client.get(f"/v1/jobs/{job_with_outputs}/artifacts/README.md")
    assert card.headers["content-type"].startswith("text/markdown") and card.text.startswith("---")
    onnx = client.get(f"/v1/jobs/{job_with_outputs}/artifacts/student.onnx")
    assert onnx.content == b"onnx-bytes" and "attachment" in onnx.headers["content-disposition"]
