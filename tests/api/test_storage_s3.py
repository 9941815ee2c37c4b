"""The API on an S3-compatible store (a real moto_server): uploads land in the bucket, downloads stream
from it or redirect to a presigned URL, and nothing of theirs stays on the API's disk."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from store import repository
from store.storage import S3Storage
from tests.api.support import digits_spec, npz_bytes, png_bytes, weights_bytes


@pytest.fixture
def s3_client(make_client: Callable[..., TestClient], s3_env: dict[str, str]) -> TestClient:
    return make_client(DISTILL_STORAGE_URL=s3_env["DISTILL_STORAGE_URL"])


def _storage(client: TestClient) -> S3Storage:
    storage = client.app.state.storage  # type: ignore[attr-defined]
    assert isinstance(storage, S3Storage)
    return storage


def _job_with_artifacts(client: TestClient) -> str:
    """A job whose outputs a worker pushed to the bucket and recorded by key."""
    job_id = client.post("/v1/jobs", json=digits_spec()).json()["id"]
    storage, database = _storage(client), client.app.state.database  # type: ignore[attr-defined]
    files = {"metrics.json": json.dumps({"student_accuracy": 0.9}).encode(), "heatmaps/0000.png": png_bytes()}
    for name, data in files.items():
        local = Path(client.app.state.settings.distill_home) / "scratch" / name  # type: ignore[attr-defined]
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        storage.put_file(f"jobs/{job_id}/{name}", local)
        with database.sessions() as session:
            content_type = "image/png" if name.endswith(".png") else "application/json"
            repository.add_artifact(session, job_id, name, f"jobs/{job_id}/{name}", content_type, len(data))
    return job_id


def test_uploads_are_kept_in_the_bucket_not_on_the_api_disk(s3_client: TestClient, tmp_path: Path) -> None:
    weights = weights_bytes(tmp_path, "cnn", 10, 1)
    model = s3_client.post("/v1/models", files={"file": ("t.safetensors", weights)},
                           data={"arch": "cnn", "num_classes": "10", "in_channels": "1"})
    x = np.zeros((20, 8, 8), dtype=np.float32)
    dataset = s3_client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes(x=x, y=np.arange(20) % 2))})

    assert model.status_code == 201, model.text
    assert dataset.status_code == 201, dataset.text
    storage = _storage(s3_client)
    assert list(storage.list_keys("models/")) == [f"models/{model.json()['id']}.safetensors"]
    assert b"".join(storage.iter_bytes(f"models/{model.json()['id']}.safetensors")) == weights
    assert list(storage.list_keys(f"datasets/{dataset.json()['id']}/"))
    home = Path(s3_client.app.state.settings.distill_home)  # type: ignore[attr-defined]
    assert not [p for p in (home / "models").rglob("*") if p.is_file()]
    assert not [p for p in (home / "datasets").rglob("*") if p.is_file()]


def test_downloads_stream_from_the_bucket(s3_client: TestClient) -> None:
    job_id = _job_with_artifacts(s3_client)

    metrics = s3_client.get(f"/v1/jobs/{job_id}/artifacts/metrics.json")
    heatmap = s3_client.get(f"/v1/jobs/{job_id}/artifacts/heatmaps/0000.png")

    assert metrics.status_code == 200 and metrics.json() == {"student_accuracy": 0.9}
    assert heatmap.status_code == 200 and heatmap.content == png_bytes()
    assert heatmap.headers["content-type"] == "image/png"
    assert s3_client.get(f"/v1/jobs/{job_id}/artifacts/nope.bin").json()["error"]["code"] == "artifact_not_found"


def test_a_missing_object_is_a_404_not_a_500(s3_client: TestClient) -> None:
    job_id = _job_with_artifacts(s3_client)
    _storage(s3_client).delete(f"jobs/{job_id}/metrics.json")

    response = s3_client.get(f"/v1/jobs/{job_id}/artifacts/metrics.json")

    assert response.status_code == 404 and response.json()["error"]["code"] == "artifact_not_found"


def test_redirect_setting_answers_with_a_presigned_url_that_works(
    make_client: Callable[..., TestClient], s3_env: dict[str, str]
) -> None:
    client = make_client(DISTILL_STORAGE_URL=s3_env["DISTILL_STORAGE_URL"], DISTILL_STORAGE_REDIRECT=True)
    job_id = _job_with_artifacts(client)

    response = client.get(f"/v1/jobs/{job_id}/artifacts/heatmaps/0000.png", follow_redirects=False)

    assert response.status_code == 307
    url = response.headers["location"]
    assert url.startswith(s3_env["AWS_ENDPOINT_URL"]) and "Signature" in url
    assert httpx.get(url).content == png_bytes()  # fetched straight from the store, no API in between
