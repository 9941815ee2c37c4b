"""Stored spec -> engine spec: upload ids become server paths, and only on the server."""

from __future__ import annotations

import pytest

from core.errors import DataError, SpecError, WeightsError
from store import repository
from store.db import Database
from store.models import DatasetRecord, ModelRecord
from store.settings import Settings
from tests.worker.jobspecs import tiny_spec
from worker.resolve import resolve_spec


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


def test_uploaded_dataset_and_model_ids_become_paths_under_home(
    worker_settings: Settings, database: Database
) -> None:
    dataset, model = _dataset(database), _model(database)
    stored = tiny_spec(dataset={"name": None, "id": dataset.id}, teacher={"weights": model.id})
    with database.sessions() as session:
        spec = resolve_spec(session, worker_settings, stored)
    assert spec.dataset.id is None
    assert spec.dataset.path == str(worker_settings.distill_home / "datasets/ds_1/data.npz")
    assert spec.dataset.image_size == 16  # the rest of the spec is untouched
    assert spec.teacher.weights == str(worker_settings.distill_home / "models/mdl_1.safetensors")
    assert stored["dataset"]["id"] == dataset.id  # the stored document is not mutated


def test_named_dataset_passes_through(worker_settings: Settings, database: Database) -> None:
    with database.sessions() as session:
        spec = resolve_spec(session, worker_settings, tiny_spec())
    assert spec.dataset.name == "digits" and spec.dataset.path is None


def test_missing_dataset_is_a_data_error_on_dataset_id(worker_settings: Settings, database: Database) -> None:
    with database.sessions() as session, pytest.raises(DataError) as raised:
        resolve_spec(session, worker_settings, tiny_spec(dataset={"name": None, "id": "ds_gone"}))
    assert raised.value.field == "dataset.id"
    assert "ds_gone" in raised.value.message


def test_missing_model_is_a_weights_error_on_teacher_weights(worker_settings: Settings, database: Database) -> None:
    with database.sessions() as session, pytest.raises(WeightsError) as raised:
        resolve_spec(session, worker_settings, tiny_spec(teacher={"weights": "mdl_gone"}))
    assert raised.value.field == "teacher.weights"


def test_a_stored_spec_that_no_longer_validates_names_the_field(worker_settings: Settings, database: Database) -> None:
    with database.sessions() as session, pytest.raises(SpecError) as raised:
        resolve_spec(session, worker_settings, tiny_spec(student={"arch": "no-such-net"}))
    assert raised.value.field == "student.arch"
