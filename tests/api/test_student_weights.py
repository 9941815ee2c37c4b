"""Student starting weights at submission: an uploaded model the caller may use, fitting the student and the data;
another class count is a 422 that names `student.head: "reset"`, and is accepted with it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from store import repository
from store.db import Database
from store.models import ModelRecord
from store.settings import Settings
from tests.api.support import digits_spec, queued_messages


def _model(db: Database, arch: str, num_classes: int, in_channels: int = 1) -> str:
    """A model row as an upload leaves it (the upload itself is tested in test_uploads_models)."""
    with db.session() as session:
        record = repository.create_model(session, ModelRecord(
            name="pretrained", arch=arch, num_classes=num_classes, in_channels=in_channels,
            relpath="models/x.safetensors", size_bytes=1, sha256="0" * 64))
    return record.id


def _refused(client: TestClient, settings: Settings, response, code: str) -> str:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["field"] == "student.weights"
    assert client.get("/v1/jobs").json()["items"] == [] and queued_messages(settings) == []
    return str(error["message"])


def test_another_class_count_is_refused_saying_how_to_reset_the_head(
    client: TestClient, app_settings: Settings, db: Database
) -> None:
    model_id = _model(db, "resnet8", 1000)
    response = client.post("/v1/jobs", json=digits_spec(student={"arch": "resnet8", "weights": model_id}))
    message = _refused(client, app_settings, response, "invalid_spec")
    assert "1000 classes" in message and "10" in message and 'student.head: "reset"' in message


def test_another_class_count_is_accepted_with_a_head_reset(client: TestClient, db: Database) -> None:
    model_id = _model(db, "resnet8", 1000)
    response = client.post("/v1/jobs", json=digits_spec(student={"arch": "resnet8", "weights": model_id,
                                                                  "head": "reset"}))
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["student"] == {"arch": "resnet8", "layer": None, "weights": model_id,
                                                  "head": "reset"}


@pytest.mark.parametrize(("model", "student", "mentions"), [
    (("resnet20", 10, 1), {"arch": "resnet8"}, "student.arch is resnet8"),  # another architecture
    (("resnet8", 10, 3), {"arch": "resnet8", "head": "reset"}, "3-channel"),  # a reset does not excuse the input
])
def test_weights_that_do_not_fit_the_student_are_refused(
    client: TestClient, app_settings: Settings, db: Database, model: tuple, student: dict, mentions: str
) -> None:
    model_id = _model(db, *model)
    response = client.post("/v1/jobs", json=digits_spec(student={**student, "weights": model_id}))
    assert mentions in _refused(client, app_settings, response, "invalid_spec")


def test_an_unknown_model_id_is_refused_on_the_students_field(client: TestClient, app_settings: Settings) -> None:
    response = client.post("/v1/jobs", json=digits_spec(student={"arch": "resnet8", "weights": "mdl_missing"}))
    _refused(client, app_settings, response, "unknown_model")
