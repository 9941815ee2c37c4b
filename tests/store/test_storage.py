"""Storage backends: the same behaviour from a local folder and from a real S3 server (moto_server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from store.settings import Settings
from store.storage import (
    FolderSync,
    LocalStorage,
    MissingObject,
    S3Storage,
    Storage,
    check_key,
    fetch_cached,
    pull_prefix,
    storage_from_settings,
    working_folder,
)
from tests.services import S3Server


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "home")
    server: S3Server = request.getfixturevalue("s3")
    return S3Storage(server.create_bucket(), "some/prefix", client=server.client())


@pytest.fixture
def home_settings(tmp_path: Path) -> Settings:
    return Settings(DISTILL_HOME=tmp_path / "home")


def _file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("key", ["", "/etc/passwd", "jobs/../../x", "jobs//x", "./x", "a\\b", "a/\x00"])
def test_keys_that_could_leave_the_root_are_refused(key: str) -> None:
    with pytest.raises(ValueError):
        check_key(key)


def test_put_get_stream_list_delete_round_trip(storage: Storage, tmp_path: Path) -> None:
    source = _file(tmp_path / "src" / "weights.bin", b"w" * 3000)

    storage.put_file("jobs/job_1/student.safetensors", source)
    storage.put_file("jobs/job_1/heatmaps/0000.png", _file(tmp_path / "src" / "p.png", b"png"))

    assert storage.list_keys("jobs/job_1/") == {
        "jobs/job_1/heatmaps/0000.png": 3, "jobs/job_1/student.safetensors": 3000,
    }  # fmt: skip
    assert b"".join(storage.iter_bytes("jobs/job_1/student.safetensors")) == b"w" * 3000
    storage.get_file("jobs/job_1/heatmaps/0000.png", tmp_path / "out" / "p.png")
    assert (tmp_path / "out" / "p.png").read_bytes() == b"png"
    storage.delete("jobs/job_1/heatmaps/0000.png")
    assert list(storage.list_keys("jobs/job_1/")) == ["jobs/job_1/student.safetensors"]
    assert storage.list_keys("jobs/job_2/") == {}


def test_missing_objects_raise_missing_object(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(MissingObject):
        storage.get_file("models/nope.safetensors", tmp_path / "x")
    with pytest.raises(MissingObject):
        b"".join(storage.iter_bytes("models/nope.safetensors"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()


def test_folder_sync_pushes_changes_and_mirrors_deletions_to_s3(
    s3: S3Server, home_settings: Settings, tmp_path: Path
) -> None:
    storage = S3Storage(s3.create_bucket(), "", client=s3.client())
    folder = working_folder(storage, home_settings, "jobs/job_1")
    assert folder.is_relative_to(home_settings.distill_home / "cache")
    _file(folder / "checkpoints" / "distilling.pt", b"epoch1")
    _file(folder / "checkpoints" / "distilling.pt.tmp", b"half-written")
    sync = FolderSync(storage, folder, "jobs/job_1")

    assert sync.push() == 1
    assert sync.push() == 0  # nothing changed
    _file(folder / "checkpoints" / "distilling.pt", b"epoch2!")
    _file(folder / "student.safetensors", b"s")
    assert sync.push() == 2
    (folder / "checkpoints" / "distilling.pt").unlink()
    sync.push(mirror=True)

    assert storage.list_keys("jobs/job_1/") == {"jobs/job_1/student.safetensors": 1}
    sync.discard_local()
    assert not folder.exists()


def test_pull_prefix_replaces_what_this_machine_kept_with_the_store(
    s3: S3Server, home_settings: Settings, tmp_path: Path
) -> None:
    storage = S3Storage(s3.create_bucket(), "p", client=s3.client())
    storage.put_file("jobs/job_1/checkpoints/distilling.pt", _file(tmp_path / "other-machine.pt", b"epoch3"))
    folder = working_folder(storage, home_settings, "jobs/job_1")
    _file(folder / "checkpoints" / "distilling.pt", b"stale epoch1")
    _file(folder / "leftover.txt", b"x")

    assert pull_prefix(storage, "jobs/job_1", folder) == 1

    assert (folder / "checkpoints" / "distilling.pt").read_bytes() == b"epoch3"
    assert not (folder / "leftover.txt").exists()


def test_local_backend_works_in_place_and_syncs_nothing(home_settings: Settings) -> None:
    storage = storage_from_settings(home_settings)
    folder = working_folder(storage, home_settings, "jobs/job_1")
    assert folder == (home_settings.distill_home / "jobs" / "job_1").resolve()
    _file(folder / "checkpoints" / "distilling.pt", b"epoch1")

    assert pull_prefix(storage, "jobs/job_1", folder) == 0
    assert FolderSync(storage, folder, "jobs/job_1").push(mirror=True) == 0
    FolderSync(storage, folder, "jobs/job_1").discard_local()
    assert (folder / "checkpoints" / "distilling.pt").read_bytes() == b"epoch1"


def test_uploads_are_fetched_once_into_the_cache(s3: S3Server, home_settings: Settings, tmp_path: Path) -> None:
    storage = S3Storage(s3.create_bucket(), "", client=s3.client())
    storage.put_file("datasets/ds_1/train/a/0.png", _file(tmp_path / "0.png", b"img"))

    root = fetch_cached(storage, home_settings, "datasets/ds_1", folder=True)
    storage.delete("datasets/ds_1/train/a/0.png")  # a second fetch would now find nothing

    assert fetch_cached(storage, home_settings, "datasets/ds_1", folder=True) == root
    assert (root / "train" / "a" / "0.png").read_bytes() == b"img"


def test_storage_url_picks_the_backend(s3_env: dict[str, str], tmp_path: Path) -> None:
    backend = storage_from_settings(Settings(DISTILL_HOME=tmp_path, DISTILL_STORAGE_URL=s3_env["DISTILL_STORAGE_URL"]))
    assert isinstance(backend, S3Storage) and backend.prefix == "distill/"
    with pytest.raises(ValueError, match="unsupported scheme"):
        storage_from_settings(Settings(DISTILL_HOME=tmp_path, DISTILL_STORAGE_URL="ftp://x/y"))
