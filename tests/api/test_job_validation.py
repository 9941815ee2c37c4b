"""Bad job specs: every one is a 422 naming the field, nothing is stored or enqueued, never a 500."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from store import repository
from store.db import Database
from store.models import DatasetRecord, ModelRecord
from store.settings import Settings
from tests.api.support import digits_spec, queued_messages


def _assert_refused(client: TestClient, settings: Settings, response: Any, code: str, field: str | None) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["field"] == field
    assert error["message"]
    assert client.get("/v1/jobs").json()["items"] == []
    assert queued_messages(settings) == []


def _model(db: Database, arch: str = "cnn", num_classes: int = 10, in_channels: int = 1) -> str:
    """A model row as an upload would leave it (the upload path itself is tested in test_uploads_models)."""
    with db.session() as session:
        record = repository.create_model(session, ModelRecord(
            name="teacher", arch=arch, num_classes=num_classes, in_channels=in_channels,
            relpath="models/x.safetensors", size_bytes=1, sha256="0" * 64))
    return record.id


def _dataset(db: Database, num_classes: int = 3, in_channels: int = 3) -> str:
    with db.session() as session:
        record = repository.create_dataset(session, DatasetRecord(
            name="shapes", kind="imagefolder", num_classes=num_classes, in_channels=in_channels,
            class_names={"names": [str(i) for i in range(num_classes)]},
            num_train=30, num_test=0, relpath="datasets/x", size_bytes=1))
    return record.id


def test_malformed_json_is_422_invalid_json(client: TestClient, app_settings: Settings) -> None:
    response = client.post("/v1/jobs", content=b'{"dataset": {"name": "digits"', headers={
        "Content-Type": "application/json"})

    _assert_refused(client, app_settings, response, "invalid_json", None)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"student": {"arch": "resnet9"}}, "student.arch"),
        ({"teacher": {"arch": "vgg16", "epochs": 1}}, "teacher.arch"),
        ({"loss": {"kd": -1.0}}, "loss.kd"),
        ({"loss": {"explanation": {"weight": -0.5}}}, "loss.explanation.weight"),
        ({"training": {"epochs": 0}}, "training.epochs"),
        ({"method": "magic"}, "method"),
        ({"method": []}, "method"),  # not a name at all: found by the schema fuzzer (was a 500)
        ({"method": {"kd": 1}}, "method"),
        ({"dataset": {"name": "digits", "id": "ds_x"}}, "dataset"),
        ({"colour": "blue"}, "colour"),
        ({"student": {"arch": "bcos/resnet9"}}, "student.arch"),
        # the B-cos explainer on models that are not B-cos networks (one side or both)
        ({"loss": {"explanation": {"weight": 1.0, "explainer": "bcos"}}}, "loss.explanation.explainer"),
        ({"method": "e2kd-bcos"}, "loss.explanation.explainer"),
        ({"method": "e2kd-bcos", "teacher": {"arch": "bcos/cifar10_resnet20", "epochs": 1}},
         "loss.explanation.explainer"),
        ({"method": "e2kd-bcos", "student": {"arch": "bcos/cifar10_resnet8"}}, "loss.explanation.explainer"),
        # a plain B-cos ViT cuts images into 16x16 patches: 20 px images do not tile
        ({"student": {"arch": "bcos/simple_vit_ti_patch16_224"}, "dataset": {"name": "digits", "image_size": 20}},
         "dataset.image_size"),
    ],
)
def test_invalid_spec_fields_are_named(client: TestClient, app_settings: Settings, changes: dict, field: str) -> None:
    response = client.post("/v1/jobs", json=digits_spec(**changes))

    _assert_refused(client, app_settings, response, "validation_error", field)


def test_text_with_a_nul_character_is_refused_naming_the_field(client: TestClient, app_settings: Settings) -> None:
    response = client.post("/v1/jobs", json=digits_spec(name="digits\u0000kd"))

    _assert_refused(client, app_settings, response, "validation_error", "name")


def test_a_body_that_is_not_an_object_is_422(client: TestClient, app_settings: Settings) -> None:
    response = client.post("/v1/jobs", json=[1, 2, 3])

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


def test_dataset_path_is_refused_the_api_never_reads_client_paths(
    client: TestClient, app_settings: Settings, tmp_path: Path
) -> None:
    response = client.post("/v1/jobs", json=digits_spec(dataset={"path": str(tmp_path)}))

    _assert_refused(client, app_settings, response, "path_not_allowed", "dataset.path")


def test_unknown_dataset_name_is_refused(client: TestClient, app_settings: Settings) -> None:
    response = client.post("/v1/jobs", json=digits_spec(dataset={"name": "imagenet"}))

    _assert_refused(client, app_settings, response, "unknown_dataset", "dataset.name")


def test_operator_registered_dataset_name_is_accepted(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    client = make_client(DISTILL_DATASETS=f"flowers={tmp_path / 'flowers'}")

    response = client.post("/v1/jobs", json=digits_spec(dataset={"name": "flowers"}))

    assert response.status_code == 201


def test_unknown_dataset_id_is_refused(client: TestClient, app_settings: Settings) -> None:
    response = client.post("/v1/jobs", json=digits_spec(dataset={"id": "ds_0000"}))

    _assert_refused(client, app_settings, response, "unknown_dataset", "dataset.id")


def test_uploaded_dataset_id_is_accepted(client: TestClient, db: Database) -> None:
    dataset_id = _dataset(db)

    response = client.post("/v1/jobs", json=digits_spec(dataset={"id": dataset_id}))

    assert response.status_code == 201
    assert response.json()["spec"]["dataset"]["id"] == dataset_id


def test_unknown_teacher_model_id_is_refused(client: TestClient, app_settings: Settings) -> None:
    response = client.post("/v1/jobs", json=digits_spec(teacher={"arch": "cnn", "weights": "mdl_missing"}))

    _assert_refused(client, app_settings, response, "unknown_model", "teacher.weights")


def test_teacher_weights_path_is_not_a_model_id(client: TestClient, app_settings: Settings) -> None:
    response = client.post("/v1/jobs", json=digits_spec(teacher={"arch": "cnn", "weights": "/etc/passwd"}))

    _assert_refused(client, app_settings, response, "unknown_model", "teacher.weights")


def test_uploaded_teacher_that_fits_digits_is_accepted(client: TestClient, db: Database) -> None:
    model_id = _model(db, "cnn", 10, 1)

    response = client.post("/v1/jobs", json=digits_spec(teacher={"arch": "cnn", "weights": model_id}))

    assert response.status_code == 201


@pytest.mark.parametrize(
    ("model", "teacher_arch", "mentions"),
    [
        (("resnet8", 10, 1), "cnn", "resnet8"),  # arch differs from teacher.arch
        (("cnn", 5, 1), "cnn", "5 classes"),  # digits has 10 classes
        (("cnn", 10, 3), "cnn", "3-channel"),  # digits is grey
    ],
)
def test_teacher_model_that_does_not_fit_is_refused(
    client: TestClient, app_settings: Settings, db: Database, model: tuple, teacher_arch: str, mentions: str
) -> None:
    model_id = _model(db, *model)

    response = client.post("/v1/jobs", json=digits_spec(teacher={"arch": teacher_arch, "weights": model_id}))

    _assert_refused(client, app_settings, response, "invalid_spec", "teacher.weights")
    assert mentions in response.json()["error"]["message"]


def test_teacher_model_class_count_is_checked_against_an_uploaded_dataset(
    client: TestClient, app_settings: Settings, db: Database
) -> None:
    dataset_id = _dataset(db, num_classes=3, in_channels=3)
    model_id = _model(db, "cnn", 4, 3)

    response = client.post("/v1/jobs", json=digits_spec(dataset={"id": dataset_id},
                                                         teacher={"arch": "cnn", "weights": model_id}))

    _assert_refused(client, app_settings, response, "invalid_spec", "teacher.weights")


@pytest.mark.parametrize(
    ("method", "url", "kwargs"),
    [
        ("GET", "/v1/jobs", {"params": {"cursor": "\u00e9\u00e9\u00e9"}}),
        ("GET", "/v1/jobs", {"params": {"limit": "1e309"}}),
        ("GET", "/v1/jobs/" + "x" * 300, {}),
        ("GET", "/v1/jobs/job%00x", {}),
        ("GET", "/v1/jobs/job%E2%80%AEx/events", {}),
        ("POST", "/v1/jobs/job%00x/cancel", {}),
        ("GET", "/v1/jobs/job%00x/artifacts/metrics.json", {}),
        ("GET", "/v1/models/mdl%00x", {}),
        ("GET", "/v1/datasets/ds%00x", {}),
        ("POST", "/v1/datasets", {"data": {"name": "a\u0000b"}, "files": {"file": ("d.zip", b"PK")}}),
        ("POST", "/v1/jobs", {"content": b"\xff\xfe\x00", "headers": {"Content-Type": "application/json"}}),
        ("POST", "/v1/jobs", {"content": b"name=x", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
        ("POST", "/v1/jobs", {"json": digits_spec(), "headers": {"Idempotency-Key": ""}}),
        ("DELETE", "/v1/jobs", {}),
        ("GET", "/v1/models/" + "y" * 100, {}),
        ("POST", "/v1/models", {"content": b"garbage", "headers": {"Content-Type": "multipart/form-data"}}),
        ("POST", "/v1/datasets", {"content": b"--b\r\nbroken", "headers": {
            "Content-Type": "multipart/form-data; boundary=b"}}),
    ],
)
def test_odd_requests_get_a_4xx_json_error_never_a_500(client: TestClient, method: str, url: str, kwargs: dict) -> None:
    response = client.request(method, url, **kwargs)

    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["code"]
