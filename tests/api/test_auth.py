"""Bearer keys on /v1 when keys are configured; health routes stay open; no open API off loopback."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from api.auth import InsecureBindError, check_bind_allowed
from store.settings import Settings
from tests.api.support import digits_spec

KEYS = "key-one,key-two"


@pytest.fixture
def secured(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(DISTILL_API_KEYS=KEYS)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic a2V5LW9uZTp4"}, {"Authorization": "key-one"},
     {"Authorization": "Bearer key-one,key-two"}],
)
def test_v1_routes_need_a_valid_bearer_key(secured: TestClient, headers: dict) -> None:
    for method, url in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/models"), ("POST", "/v1/datasets"),
                        ("GET", "/v1/jobs/job_x/artifacts/metrics.json")]:
        response = secured.request(method, url, headers=headers, json=digits_spec() if method == "POST" else None)

        assert response.status_code == 401, (method, url)
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("key", ["key-one", "key-two"])
def test_any_configured_key_is_accepted(secured: TestClient, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}

    created = secured.post("/v1/jobs", json=digits_spec(), headers=headers)

    assert created.status_code == 201
    assert secured.get(f"/v1/jobs/{created.json()['id']}", headers=headers).status_code == 200


def test_health_routes_are_open_with_keys_configured(secured: TestClient) -> None:
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/metrics").status_code == 200
    assert secured.get("/readyz").status_code in (200, 503)  # open; readiness itself is tested elsewhere


def test_without_keys_v1_is_open(client: TestClient) -> None:
    assert client.get("/v1/jobs").status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_loopback_binds_are_allowed_without_keys(host: str) -> None:
    check_bind_allowed(host, Settings(DISTILL_API_KEYS=""))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.org"])
def test_network_binds_are_refused_without_keys(host: str) -> None:
    with pytest.raises(InsecureBindError, match="DISTILL_API_KEYS"):
        check_bind_allowed(host, Settings(DISTILL_API_KEYS=""))


def test_network_binds_are_allowed_with_keys() -> None:
    check_bind_allowed("0.0.0.0", Settings(DISTILL_API_KEYS=KEYS))
