"""Liveness, readiness (database, broker, a live worker), Prometheus metrics, and the 500 safety net."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

from store import repository
from store.db import Database
from store.models import utcnow
from store.settings import Settings
from tests.api.support import digits_spec


def _touch(settings: Settings, worker_id: str, seen_at: datetime, device: dict[str, Any] | None = None) -> None:
    """A worker's presence row as its sweeper would leave it at `seen_at`."""
    database = Database(settings.db_url)
    with database.sessions() as session:
        repository.touch_worker(session, worker_id, "host", 1, now=seen_at, device=device)
    database.dispose()


def test_healthz_answers_while_the_process_is_up(client: TestClient) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_with_database_and_broker_but_no_worker_is_503_naming_the_worker(client: TestClient) -> None:
    response = client.get("/readyz")

    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"]["ok"] is True
    assert checks["broker"]["ok"] is True
    assert checks["worker"]["ok"] is False


def test_readyz_is_ready_when_a_worker_is_present(client: TestClient, app_settings: Settings) -> None:
    _touch(app_settings, "worker-test", utcnow())

    response = client.get("/readyz")

    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "ready"
    assert all(check["ok"] for check in response.json()["checks"].values())


def test_readyz_lists_each_present_worker_with_its_device(client: TestClient, app_settings: Settings) -> None:
    gpu = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85520809984, "count": 1}
    _touch(app_settings, "worker-gpu1", utcnow(), device=gpu)
    _touch(app_settings, "worker-gone", utcnow() - timedelta(hours=1), device=gpu)

    workers = client.get("/readyz").json()["workers"]

    assert workers == [{"id": "worker-gpu1", "hostname": "host", "device": gpu}]


def test_readyz_ignores_a_worker_that_stopped_reporting(client: TestClient, app_settings: Settings) -> None:
    _touch(app_settings, "worker-gone", utcnow() - timedelta(hours=1))

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"]["worker"]["ok"] is False


def test_readyz_reports_an_unreachable_broker(make_client: Callable[..., TestClient]) -> None:
    client = make_client(BROKER_URL="redis://127.0.0.1:1/0")

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"]["broker"]["ok"] is False
    assert response.json()["checks"]["database"]["ok"] is True


def test_metrics_count_requests_by_route_template_and_jobs_by_state(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=digits_spec()).json()["id"]
    client.post("/v1/jobs", json=digits_spec())
    client.get(f"/v1/jobs/{job_id}")
    client.post(f"/v1/jobs/{job_id}/cancel")

    text = client.get("/metrics").text

    assert 'distill_http_requests_total{method="POST",route="/v1/jobs",status="201"} 2.0' in text
    assert 'distill_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"} 1.0' in text
    assert 'distill_http_request_duration_seconds_count{method="POST",route="/v1/jobs",status="201"} 2.0' in text
    assert 'distill_http_request_duration_seconds_bucket{le="+Inf",method="POST",route="/v1/jobs",status="201"} 2.0' \
        in text
    assert 'distill_jobs{status="queued"} 1.0' in text
    assert 'distill_jobs{status="cancelled"} 1.0' in text
    assert 'distill_jobs{status="running"} 0.0' in text
    assert "distill_queue_depth 1.0" in text


def test_an_unexpected_error_is_a_json_500_without_the_traceback(make_client: Callable[..., TestClient]) -> None:
    client = make_client(raise_server_exceptions=False)

    def explode() -> None:
        raise RuntimeError("secret internals /srv/app/config.py line 12")

    client.app.add_api_route("/explode", explode)  # type: ignore[attr-defined]

    response = client.get("/explode")

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "secret internals" not in response.text and "Traceback" not in response.text
    assert 'route="/explode",status="500"' in client.get("/metrics").text


def test_a_cuda_job_no_present_worker_can_hold_is_422_on_devices(client: TestClient, app_settings: Settings) -> None:
    spec = {"name": "ddp", "method": "kd", "dataset": {"name": "digits", "image_size": 16},
            "teacher": {"arch": "resnet8", "epochs": 1}, "student": {"arch": "resnet8"},
            "training": {"epochs": 1, "batch_size": 32, "device": "cuda", "devices": 2}}
    one_gpu = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85520809984, "count": 1}

    _touch(app_settings, "worker-gpu0", utcnow(), device=one_gpu)
    _touch(app_settings, "worker-cpu", utcnow(), device={"type": "cpu", "name": "cpu", "count": 1})
    refused = client.post("/v1/jobs", json=spec)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["field"] == "training.devices"
    assert "the most CUDA devices any of the 2 present worker(s) sees is 1" in refused.json()["error"]["message"]

    _touch(app_settings, "worker-all-gpus", utcnow(), device={**one_gpu, "count": 2})
    assert client.post("/v1/jobs", json=spec).status_code == 201  # one present worker sees two GPUs
