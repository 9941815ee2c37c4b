"""Bodies too big or too deep, control characters, and no server path in what a client can read."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.limits import json_depth
from store import repository
from store.artifacts import redact_paths
from store.settings import Settings
from tests.api.support import digits_spec

KEY = "limits-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_a_json_body_over_the_limit_gets_413_before_it_is_parsed(make_client: Callable[..., TestClient]) -> None:
    client = make_client(DISTILL_MAX_JSON_KB=1)
    padded = digits_spec(name="x" * 2000)  # valid JSON, and would be a 422 if it were parsed (name > 200)

    response = client.post("/v1/jobs", json=padded)

    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "body_too_large"
    assert client.get("/v1/jobs").json()["items"] == []


def test_a_chunked_body_over_the_limit_gets_413_too(make_client: Callable[..., TestClient]) -> None:
    client = make_client(DISTILL_MAX_JSON_KB=1)

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"name": "'
        for _ in range(64):
            yield b"y" * 64
        yield b'"}'

    response = client.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})

    assert response.status_code == 413, response.text


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deeply_nested_json_gets_a_422_not_a_crash(client: TestClient, depth: int) -> None:
    body = "[" * depth + "]" * depth
    response = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "json_too_deep"


def test_json_depth_ignores_brackets_inside_strings() -> None:
    assert json_depth(b'{"a": "[[[[[[[[[[", "b": [1, {"c": "\\"]]]"}]}') == 3


@pytest.mark.parametrize("name", ["bad\nname", "bell\x07", "esc\x1b[31m", "del\x7f", "c1\x85"])
def test_control_characters_in_a_job_name_get_422_naming_the_field(client: TestClient, name: str) -> None:
    response = client.post("/v1/jobs", json=digits_spec(name=name))

    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "name"


def test_control_characters_in_the_idempotency_key_get_422(client: TestClient) -> None:
    response = client.post("/v1/jobs", json=digits_spec(), headers={"Idempotency-Key": "k\x01y"})

    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "Idempotency-Key"


def test_control_characters_in_an_upload_name_get_422(client: TestClient) -> None:
    response = client.post("/v1/datasets", data={"name": "a\tb"}, files={"file": ("d.zip", b"PK")})

    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "name"


def test_without_a_key_a_body_is_refused_before_it_is_read(make_client: Callable[..., TestClient]) -> None:
    client = make_client(DISTILL_API_KEYS=KEY, DISTILL_MAX_JSON_KB=1)

    for body in (b"[" * 5000, b"x" * 5000, b"{"):
        response = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 401, response.text


def test_error_messages_name_no_server_folder(settings: Callable[..., Settings], tmp_path: Path) -> None:
    configured = settings(DISTILL_DATASETS=f"flowers={tmp_path / 'shared' / 'flowers'}")
    message = (f"cannot read {configured.distill_home / 'datasets' / 'ds_1' / 'train'} "
               f"or {tmp_path / 'shared' / 'flowers' / 'a.png'}")

    redacted = redact_paths(message, configured)

    assert str(tmp_path) not in redacted
    assert "<data>/datasets/ds_1/train" in redacted and "<dataset:flowers>/a.png" in redacted
