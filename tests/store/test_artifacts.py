"""Artifacts: what a job folder publishes, how it is recorded, and that no row can point outside DISTILL_HOME."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from store import repository
from store.artifacts import UnsafeArtifactPath, artifact_path, content_type_for, job_dir, record_job_outputs
from store.settings import Settings
from tests.store.support import make_job


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _fill_job_folder(folder: Path) -> None:
    _write(folder / "student.safetensors", b"s" * 10)
    _write(folder / "metrics.json", b'{"student_accuracy": 0.9}')
    _write(folder / "README.md", b"# model card")
    _write(folder / "report.md", b"# report")  # nothing writes it, so nothing publishes it
    _write(folder / "heatmaps" / "0001.png", b"p" * 3)
    _write(folder / "heatmaps" / "0000.png", b"p" * 4)
    _write(folder / "checkpoints" / "epoch_1.safetensors", b"c")
    _write(folder / "heatmaps" / "notes.txt", b"n")


def test_record_job_outputs_records_published_files_only(session: Session, settings: Callable[..., Settings]) -> None:
    config = settings()
    job = make_job(session)
    folder = job_dir(config, job.id)
    _fill_job_folder(folder)

    recorded = record_job_outputs(session, config, job.id)

    by_name = {artifact.name: artifact for artifact in recorded}
    assert sorted(by_name) == [
        "README.md", "heatmaps/0000.png", "heatmaps/0001.png", "metrics.json", "student.safetensors",
    ]  # fmt: skip
    student = by_name["student.safetensors"]
    assert (student.content_type, student.size_bytes) == ("application/octet-stream", 10)
    assert student.relpath == f"jobs/{job.id}/student.safetensors"
    assert by_name["heatmaps/0000.png"].content_type == "image/png"
    assert artifact_path(config, student) == (folder / "student.safetensors").resolve()
    assert [artifact.name for artifact in repository.get_job(session, job.id).artifacts] == sorted(by_name)


def test_recording_again_replaces_rows_instead_of_duplicating(
    session: Session, settings: Callable[..., Settings]
) -> None:
    config = settings()
    job = make_job(session)
    folder = job_dir(config, job.id)
    _write(folder / "student.safetensors", b"old")
    record_job_outputs(session, config, job.id)

    _write(folder / "student.safetensors", b"resumed and longer")
    record_job_outputs(session, config, job.id)

    artifacts = repository.get_job(session, job.id).artifacts
    assert [(artifact.name, artifact.size_bytes) for artifact in artifacts] == [("student.safetensors", 18)]


def test_adding_an_artifact_bumps_the_job_version(session: Session) -> None:
    job = make_job(session)
    version = job.version

    repository.add_artifact(session, job.id, "metrics.json", f"jobs/{job.id}/metrics.json", "application/json", 2)

    assert repository.get_job(session, job.id).version == version + 1


@pytest.mark.parametrize("relpath", ["../outside.bin", "jobs/../../outside.bin", "/etc/passwd", "."])
def test_artifact_path_refuses_paths_escaping_distill_home(
    session: Session, settings: Callable[..., Settings], relpath: str
) -> None:
    config = settings()
    job = make_job(session)
    artifact = repository.add_artifact(session, job.id, "student.safetensors", relpath, "application/octet-stream", 1)

    with pytest.raises(UnsafeArtifactPath):
        artifact_path(config, artifact)


def test_symlink_out_of_distill_home_is_neither_recorded_nor_served(
    session: Session, settings: Callable[..., Settings], tmp_path: Path
) -> None:
    config = settings()
    job = make_job(session)
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    folder = job_dir(config, job.id)
    folder.mkdir(parents=True)
    (folder / "metrics.json").symlink_to(secret)

    assert record_job_outputs(session, config, job.id) == []

    relpath = f"jobs/{job.id}/metrics.json"
    artifact = repository.add_artifact(session, job.id, "metrics.json", relpath, "application/json", 2)
    with pytest.raises(UnsafeArtifactPath):
        artifact_path(config, artifact)


def test_get_artifact_needs_the_exact_name(session: Session) -> None:
    job = make_job(session)
    repository.add_artifact(session, job.id, "heatmaps/0000.png", f"jobs/{job.id}/heatmaps/0000.png", "image/png", 1)

    assert repository.get_artifact(session, job.id, "heatmaps/0000.png").content_type == "image/png"
    with pytest.raises(repository.NotFound):
        repository.get_artifact(session, job.id, "0000.png")


def test_add_artifact_to_unknown_job_raises_not_found(session: Session) -> None:
    with pytest.raises(repository.NotFound):
        repository.add_artifact(session, "job_ffffffffffffffff", "metrics.json", "x", "application/json", 1)


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("student.safetensors", "application/octet-stream"),
        ("metrics.json", "application/json"),
        ("heatmaps/0003.PNG", "image/png"),
        ("report.md", "text/markdown"),
        ("unknown.bin", "application/octet-stream"),
    ],
)
def test_content_type_for_known_suffixes(name: str, content_type: str) -> None:
    assert content_type_for(name) == content_type


@pytest.mark.parametrize("job_id", ["../etc", "job_1/../../x", "", "a/b"])
def test_job_dir_refuses_anything_but_a_plain_id(job_id: str, tmp_path: Path) -> None:
    config = Settings(DISTILL_HOME=tmp_path)
    with pytest.raises(ValueError):
        job_dir(config, job_id)
