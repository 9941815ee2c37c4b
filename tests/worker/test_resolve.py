"""The stored spec reaches the engine as stored (ids); the worker's resolver turns ids into paths on the server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from core.errors import DataError, SpecError, WeightsError
from store import repository
from store.db import Database
from store.models import DatasetRecord, ModelRecord
from store.settings import Settings
from tests.worker.jobspecs import tiny_spec
from worker.resolve import StoredUploads, parse_stored_spec


def _dataset(database: Database) -> DatasetRecord:
    record = DatasetRecord(
        name="shapes", kind="npz", num_classes=3, class_names={"names": ["a", "b", "c"]},
        num_train=30, num_test=9, relpath="datasets/ds_1/data.npz", size_bytes=10,
    )  # fmt: skip
    with database.sessions() as session:
        return repository.create_dataset(session, record)


def _model(database: Database) -> ModelRecord:
    record = ModelRecord(
        name="teacher", arch="cnn", num_classes=10, in_channels=1,
        relpath="models/mdl_1.safetensors", size_bytes=10, sha256="0" * 64,
    )  # fmt: skip
    with database.sessions() as session:
        return repository.create_model(session, record)


def test_the_engine_gets_the_stored_spec_with_its_upload_ids(database: Database) -> None:
    dataset, model = _dataset(database), _model(database)
    stored = tiny_spec(dataset={"name": None, "id": dataset.id}, teacher={"weights": model.id})
    spec = parse_stored_spec(stored)
    assert spec.dataset.id == dataset.id and spec.dataset.path is None
    assert spec.teacher.weights == model.id
    assert spec.model_dump(mode="json") == parse_stored_spec(spec.model_dump(mode="json")).model_dump(mode="json")


def test_uploaded_dataset_and_model_ids_resolve_to_paths_under_home(
    worker_settings: Settings, database: Database
) -> None:
    dataset, model = _dataset(database), _model(database)
    uploads = StoredUploads(database.sessions, worker_settings)
    assert uploads.resolve_dataset(dataset.id) == worker_settings.distill_home / "datasets/ds_1/data.npz"
    assert uploads.resolve_weights(model.id) == worker_settings.distill_home / "models/mdl_1.safetensors"


def test_every_lookup_goes_through_the_retry(worker_settings: Settings, database: Database) -> None:
    dataset = _dataset(database)
    waits: list[str] = []

    def retry(what: str, step: Callable[[], Path]) -> Path:
        waits.append(what)
        return step()

    StoredUploads(database.sessions, worker_settings, retry=retry).resolve_dataset(dataset.id)
    assert waits == [f"resolve dataset {dataset.id}"]


def test_missing_dataset_is_a_data_error_on_dataset_id(worker_settings: Settings, database: Database) -> None:
    with pytest.raises(DataError) as raised:
        StoredUploads(database.sessions, worker_settings).resolve_dataset("ds_gone")
    assert raised.value.field == "dataset.id"
    assert "ds_gone" in raised.value.message


def test_missing_model_is_a_weights_error_on_teacher_weights(worker_settings: Settings, database: Database) -> None:
    with pytest.raises(WeightsError) as raised:
        StoredUploads(database.sessions, worker_settings).resolve_weights("mdl_gone")
    assert raised.value.field == "teacher.weights"


def test_a_stored_spec_that_no_longer_validates_names_the_field() -> None:
    with pytest.raises(SpecError) as raised:
        parse_stored_spec(tiny_spec(student={"arch": "no-such-net"}))
    assert raised.value.field == "student.arch"
