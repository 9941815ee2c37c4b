"""Engine setup per backend, the shared Database holder, counters and the model/dataset records."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from store import repository
from store.db import Database, make_engine
from store.models import DatasetRecord, JobStatus, ModelRecord, utcnow
from store.settings import Settings
from tests.store.support import force_state, make_job


def test_sqlite_engine_uses_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing' / 'folder' / 'distill.db'}"
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            pragma = lambda name: connection.execute(text(f"PRAGMA {name}")).scalar()  # noqa: E731
            assert (pragma("journal_mode"), pragma("busy_timeout"), pragma("foreign_keys")) == ("wal", 30000, 1)
    finally:
        engine.dispose()
    assert (tmp_path / "missing" / "folder" / "distill.db").exists()


def test_postgres_engine_pre_pings_pooled_connections(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        assert engine.pool._pre_ping is True
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_database_from_settings_uses_the_configured_url(settings: Callable[..., Settings], db_url: str) -> None:
    database = Database.from_settings(settings())
    try:
        assert database.url == db_url
        with database.session() as session:
            assert repository.count_jobs_by_status(session)["queued"] == 0
    finally:
        database.dispose()


def test_default_database_is_a_sqlite_file_in_distill_home(tmp_path: Path) -> None:
    config = Settings(DISTILL_HOME=tmp_path / "home")
    assert config.db_url == f"sqlite:///{tmp_path / 'home' / 'distill.db'}"


def test_deleting_a_job_deletes_its_artifacts(session: Session) -> None:
    job = make_job(session)
    repository.add_artifact(session, job.id, "metrics.json", f"jobs/{job.id}/metrics.json", "application/json", 2)

    session.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": job.id})
    session.commit()

    assert session.execute(text("SELECT count(*) FROM artifacts")).scalar() == 0


def test_timestamps_come_back_timezone_aware_utc(session: Session) -> None:
    job = make_job(session)

    fresh = repository.get_job(session, job.id)

    assert fresh.created_at.utcoffset() == timedelta(0)
    assert abs(fresh.created_at - utcnow()) < timedelta(minutes=1)


def test_count_jobs_by_status_lists_every_status(session: Session) -> None:
    for _ in range(2):
        make_job(session)
    force_state(session, make_job(session).id, status=JobStatus.failed.value)

    counts = repository.count_jobs_by_status(session)

    assert counts == {
        "waiting": 0, "queued": 2, "running": 0, "cancelling": 0, "succeeded": 0, "failed": 1, "cancelled": 0,
    }  # fmt: skip


def _model(name: str) -> ModelRecord:
    return ModelRecord(name=name, arch="resnet20", num_classes=10, in_channels=3, relpath=f"models/{name}.safetensors",
                       size_bytes=123, sha256="0" * 64)  # fmt: skip


def test_models_get_ids_and_list_newest_first(session: Session) -> None:
    first = repository.create_model(session, _model("first"))
    second = repository.create_model(session, _model("second"))

    assert first.id.startswith("mdl_") and len(first.id) == 4 + 16
    assert repository.get_model(session, first.id).name == "first"
    assert [record.id for record in repository.list_models(session)] == [second.id, first.id]
    assert [record.id for record in repository.list_models(session, limit=1)] == [second.id]
    with pytest.raises(repository.NotFound):
        repository.get_model(session, "mdl_ffffffffffffffff")


def test_datasets_get_ids_and_list_newest_first(session: Session) -> None:
    def dataset(name: str) -> DatasetRecord:
        return DatasetRecord(name=name, kind="npz", num_classes=3, class_names={"names": ["a", "b", "c"]},
                             num_train=30, num_test=9, relpath=f"datasets/{name}", size_bytes=99)  # fmt: skip

    first = repository.create_dataset(session, dataset("first"))
    second = repository.create_dataset(session, dataset("second"))

    assert first.id.startswith("ds_")
    assert repository.get_dataset(session, first.id).class_names == {"names": ["a", "b", "c"]}
    assert [record.id for record in repository.list_datasets(session)] == [second.id, first.id]
    with pytest.raises(repository.NotFound):
        repository.get_dataset(session, "ds_ffffffffffffffff")


def test_upload_ids_can_be_chosen_before_the_row_exists(session: Session) -> None:
    model_id = repository.new_model_id()
    record = _model("pre-named")
    record.id = model_id

    assert repository.create_model(session, record).id == model_id
