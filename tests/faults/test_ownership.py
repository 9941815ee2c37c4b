"""With keys on, every job, model and dataset belongs to the key that created it; an admin key sees all.

Another key gets 404 (never 403: that would confirm the id exists) and does not
see the record in lists; the database keeps only an HMAC of the key.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import text

from api.auth import key_fingerprint
from tests.api.support import digits_spec, npz_bytes, weights_bytes

import numpy as np

ALICE, BOB, ADMIN = "alice-key-1", "bob-key-2", "admin-key-3"


def as_key(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def keyed_client(make_client: Callable[..., TestClient], **extra: object) -> TestClient:
    return make_client(DISTILL_API_KEYS=f"{ALICE},{BOB}", DISTILL_ADMIN_KEYS=ADMIN,
                       DISTILL_KEY_HASH_SECRET="test-secret", **extra)


def upload_dataset(client: TestClient, key: str) -> str:
    x = np.random.default_rng(0).integers(0, 255, (20, 8, 8), dtype=np.uint8)
    body = npz_bytes(x=x, y=np.arange(20) % 2)
    response = client.post("/v1/datasets", files={"file": ("blobs.npz", body)}, headers=as_key(key))
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_records_of_one_key_are_404_and_unlisted_for_another(make_client, tmp_path) -> None:
    client = keyed_client(make_client)
    job = client.post("/v1/jobs", json=digits_spec(), headers=as_key(ALICE)).json()
    model = client.post("/v1/models", data={"arch": "cnn", "num_classes": "10", "in_channels": "1"},
                        files={"file": ("t.safetensors", weights_bytes(tmp_path, "cnn", 10, 1))},
                        headers=as_key(ALICE)).json()
    dataset_id = upload_dataset(client, ALICE)

    for url in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/events", f"/v1/jobs/{job['id']}/artifacts/metrics.json",
                f"/v1/models/{model['id']}", f"/v1/datasets/{dataset_id}"):
        response = client.get(url, headers=as_key(BOB))
        assert response.status_code == 404, (url, response.text)
        assert response.json()["error"]["code"].endswith("not_found")
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=as_key(BOB)).status_code == 404
    for url in ("/v1/jobs", "/v1/models", "/v1/datasets"):
        assert client.get(url, headers=as_key(BOB)).json()["items"] == [], url
        assert len(client.get(url, headers=as_key(ALICE)).json()["items"]) == 1, url
        assert len(client.get(url, headers=as_key(ADMIN)).json()["items"]) == 1, url
    assert client.get(f"/v1/jobs/{job['id']}", headers=as_key(ADMIN)).status_code == 200
    assert client.get(f"/v1/jobs/{job['id']}", headers=as_key(ALICE)).json()["status"] == "queued"
    assert client.get(f"/v1/jobs/{job['id']}", headers=as_key(BOB)).status_code == 404  # cancel did nothing


def test_a_job_may_not_use_another_keys_dataset_or_model(make_client, tmp_path) -> None:
    client = keyed_client(make_client)
    dataset_id = upload_dataset(client, ALICE)
    model_id = client.post("/v1/models", data={"arch": "cnn", "num_classes": "10", "in_channels": "1"},
                           files={"file": ("t.safetensors", weights_bytes(tmp_path, "cnn", 10, 1))},
                           headers=as_key(ALICE)).json()["id"]

    by_dataset = client.post("/v1/jobs", json=digits_spec(dataset={"id": dataset_id, "image_size": 8}),
                             headers=as_key(BOB))
    by_model = client.post("/v1/jobs", json=digits_spec(teacher={"arch": "cnn", "weights": model_id}),
                           headers=as_key(BOB))

    assert by_dataset.status_code == 422 and by_dataset.json()["error"]["code"] == "unknown_dataset"
    assert by_model.status_code == 422 and by_model.json()["error"]["code"] == "unknown_model"


def test_the_same_idempotency_key_from_two_keys_makes_two_jobs(make_client) -> None:
    client = keyed_client(make_client)
    first = client.post("/v1/jobs", json=digits_spec(), headers={**as_key(ALICE), "Idempotency-Key": "k1"})
    second = client.post("/v1/jobs", json=digits_spec(name="other"), headers={**as_key(BOB), "Idempotency-Key": "k1"})

    assert first.status_code == 201 and second.status_code == 201, second.text
    assert first.json()["id"] != second.json()["id"]


def test_the_database_stores_an_hmac_of_the_key_never_the_key(make_client) -> None:
    client = keyed_client(make_client)
    job_id = client.post("/v1/jobs", json=digits_spec(), headers=as_key(ALICE)).json()["id"]

    with client.app.state.database.engine.connect() as connection:  # type: ignore[attr-defined]
        owner = connection.execute(text("SELECT owner FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one()

    settings = client.app.state.settings  # type: ignore[attr-defined]
    assert owner == key_fingerprint(ALICE, settings) and len(owner) == 64
    assert ALICE not in owner


def test_post_routes_are_rate_limited_per_key_with_retry_after(make_client) -> None:
    client = keyed_client(make_client, DISTILL_RATE_LIMIT_PER_MIN=3)

    statuses = [client.post("/v1/jobs", json=digits_spec(), headers=as_key(ALICE)).status_code for _ in range(4)]
    limited = client.post("/v1/jobs/job_0/cancel", headers=as_key(ALICE))

    assert statuses == [201, 201, 201, 429]
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 20
    assert client.post("/v1/jobs", json=digits_spec(), headers=as_key(BOB)).status_code == 201  # its own bucket
    assert client.get("/v1/jobs", headers=as_key(ALICE)).status_code == 200  # reads are not limited
