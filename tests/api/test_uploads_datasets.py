"""Dataset uploads: ImageFolder zips and npz files are checked, unpacked atomically, and hostile archives refused."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from store.settings import Settings
from tests.api.support import (
    TouchOnLoad,
    digits_spec,
    image_folder_zip,
    npz_bytes,
    png_bytes,
    zip_bytes,
)


def _upload(client: TestClient, data: bytes, filename: str = "data.zip", name: str | None = None):
    return client.post("/v1/datasets", data={"name": name} if name else {},
                       files={"file": (filename, data, "application/octet-stream")})


def _leftovers(settings: Settings) -> list[Path]:
    return [path for folder in (settings.datasets_dir, settings.distill_home / "tmp") if folder.is_dir()
            for path in folder.iterdir()]


def _assert_refused(response, settings: Settings, code: str) -> None:
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["field"] == "file"
    assert _leftovers(settings) == []


def test_image_folder_zip_is_unpacked_and_recorded(client: TestClient, app_settings: Settings) -> None:
    response = _upload(client, image_folder_zip(("cat", "dog", "owl"), per_class=3), name="pets")

    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["id"].startswith("ds_") and dataset["name"] == "pets" and dataset["kind"] == "imagefolder"
    assert dataset["num_classes"] == 3 and dataset["class_names"] == ["cat", "dog", "owl"]
    assert (dataset["num_train"], dataset["num_test"], dataset["in_channels"]) == (9, 9, 1)
    assert dataset["test_split"] == "test"
    root = app_settings.datasets_dir / dataset["id"]
    assert (root / "train" / "owl" / "2.png").read_bytes() == png_bytes(40 + 120 + 2)
    assert client.get(f"/v1/datasets/{dataset['id']}").json() == dataset
    assert [item["id"] for item in client.get("/v1/datasets").json()["items"]] == [dataset["id"]]
    assert list((app_settings.distill_home / "tmp").iterdir()) == []


def test_a_wrapper_folder_inside_the_zip_is_skipped(client: TestClient, app_settings: Settings) -> None:
    response = _upload(client, image_folder_zip(prefix="my-data/", test=False))

    assert response.status_code == 201, response.text
    dataset = response.json()
    assert (dataset["num_train"], dataset["num_test"], dataset["test_split"]) == (6, 0, None)
    assert (app_settings.datasets_dir / dataset["id"] / "train" / "cat").is_dir()


@pytest.mark.parametrize("held_out", ["val", "valid", "validation"])
def test_a_val_folder_is_the_held_out_split_and_the_record_says_so(client: TestClient, held_out: str) -> None:
    members = {f"{split}/{name}/{i}.png": png_bytes(10 * i + 5, size=8 + 4 * i)
               for split in ("train", held_out) for name in ("cat", "dog") for i in range(2 if split == held_out else 3)}

    response = _upload(client, zip_bytes(members))

    assert response.status_code == 201, response.text
    dataset = response.json()
    assert (dataset["num_train"], dataset["num_test"], dataset["test_split"]) == (6, 4, held_out)
    assert client.get(f"/v1/datasets/{dataset['id']}").json()["test_split"] == held_out


def test_uploaded_dataset_can_feed_a_job(client: TestClient) -> None:
    dataset_id = _upload(client, image_folder_zip()).json()["id"]

    response = client.post("/v1/jobs", json=digits_spec(dataset={"id": dataset_id}))

    assert response.status_code == 201


@pytest.mark.parametrize(
    "member",
    [
        "../evil.txt",
        "train/cat/../../../evil.txt",
        "{outside}/evil.txt",  # absolute: the test's own folder, beside DISTILL_HOME
        "C:/evil.txt",
        "..\\evil.txt",
    ],
)
def test_zip_slip_is_refused_and_nothing_lands_outside(
    client: TestClient, app_settings: Settings, member: str
) -> None:
    outside = app_settings.distill_home.parent
    member = member.replace("{outside}", str(outside))
    archive = zip_bytes({member: b"escaped", "train/cat/0.png": png_bytes(), "train/dog/0.png": png_bytes(200)})

    response = _upload(client, archive)

    _assert_refused(response, app_settings, "unsafe_archive")
    assert not list(outside.rglob("evil.txt"))


def test_a_symlink_member_is_refused(client: TestClient, app_settings: Settings) -> None:
    archive = zip_bytes({"train/cat/0.png": png_bytes(), "train/dog/0.png": png_bytes(200)},
                        symlinks={"train/cat/1.png": "/etc/passwd"})

    response = _upload(client, archive)

    _assert_refused(response, app_settings, "unsafe_archive")


def test_a_zip_bomb_is_refused_before_unpacking(make_client: Callable[..., TestClient]) -> None:
    client = make_client(DISTILL_MAX_UPLOAD_MB=1)
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("train/cat/0.png", b"\0" * (8 * 1024 * 1024))  # 8 MB of zeros, a few KB packed
        archive.writestr("train/dog/0.png", png_bytes())
    assert len(buffer.getvalue()) < 1024 * 1024

    response = _upload(client, buffer.getvalue())

    _assert_refused(response, settings, "unsafe_archive")


@pytest.mark.parametrize(
    "archive",
    [
        pytest.param(image_folder_zip(("only",), test=False), id="one-class"),
        pytest.param(zip_bytes({"train/cat/0.png": png_bytes(), "train/dog/0.png": b"not an image"}),
                     id="undecodable-image"),
        pytest.param(zip_bytes({"train/cat/0.png": png_bytes(), "train/dog/readme.txt": b"hi"}),
                     id="class-without-images"),
        pytest.param(zip_bytes({"train/cat/0.png": png_bytes(), "train/dog/0.png": png_bytes(9),
                                "test/eel/0.png": png_bytes()}), id="test-class-unknown-to-train"),
        pytest.param(b"PK\x03\x04 truncated", id="broken-zip"),
        pytest.param(b"plain bytes", id="not-an-archive"),
    ],
)
def test_unusable_datasets_are_refused(client: TestClient, app_settings: Settings, archive: bytes) -> None:
    response = _upload(client, archive)

    _assert_refused(response, app_settings, "invalid_dataset")


def test_npz_dataset_is_recorded(client: TestClient, app_settings: Settings) -> None:
    rng = np.random.default_rng(0)
    data = npz_bytes(x=rng.integers(0, 255, (30, 8, 8), dtype=np.uint8), y=np.arange(30) % 3,
                     x_test=rng.integers(0, 255, (6, 8, 8), dtype=np.uint8), y_test=np.arange(6) % 3)

    response = _upload(client, data, filename="arrays.npz")

    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["kind"] == "npz" and dataset["name"] == "arrays"
    assert (dataset["num_classes"], dataset["num_train"], dataset["num_test"], dataset["in_channels"]) == (3, 30, 6, 1)
    assert (app_settings.datasets_dir / dataset["id"] / "data.npz").read_bytes() == data


def test_npz_with_an_object_array_is_refused_without_unpickling(
    client: TestClient, app_settings: Settings, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    labels = np.array([TouchOnLoad(marker), 1, 0, 1], dtype=object)  # saved as a pickle inside the .npz
    data = npz_bytes(x=np.zeros((4, 8, 8), dtype=np.uint8), y=labels)

    response = _upload(client, data, filename="evil.npz")

    _assert_refused(response, app_settings, "invalid_dataset")
    assert not marker.exists()


def test_npz_with_numbers_where_labels_belong_is_refused(client: TestClient, app_settings: Settings) -> None:
    data = npz_bytes(x=np.zeros((4, 8, 8), dtype=np.uint8), y=np.array([0.5, 1.5, 0.5, 1.5]))

    response = _upload(client, data, filename="bad.npz")

    _assert_refused(response, app_settings, "invalid_dataset")


def test_an_oversize_dataset_upload_is_413(make_client: Callable[..., TestClient]) -> None:
    client = make_client(DISTILL_MAX_UPLOAD_MB=1)
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]

    response = _upload(client, b"\1" * (2 * 1024 * 1024))

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "upload_too_large"
    assert _leftovers(settings) == []


def test_unknown_dataset_is_404(client: TestClient) -> None:
    response = client.get("/v1/datasets/ds_missing")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "dataset_not_found"
