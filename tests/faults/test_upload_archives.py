"""Hostile and broken dataset archives: no server path in any answer, bombs refused before they land on disk,
a pixel limit that names the member, and a bound on how many uploads are checked at once.

Every archive is generated here (no stored fixtures)."""

from __future__ import annotations

import io
import re
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.redact import scrub_paths
from store.settings import Settings
from tests.api.support import image_folder_zip, png_bytes, zip_bytes

_ABSOLUTE = re.compile(r"(?<![\w.>:/~-])/[A-Za-z0-9_.-]+/")


def _settings(client: TestClient) -> Settings:
    return client.app.state.settings  # type: ignore[attr-defined]


def _upload(client: TestClient, data: bytes, filename: str = "data.zip") -> object:
    return client.post("/v1/datasets", files={"file": (filename, data)})


def _valid_members() -> dict[str, bytes]:
    return {f"train/{name}/{i}.png": png_bytes(40 + 60 * label + i) for label, name in enumerate(("cat", "dog"))
            for i in range(2)}


def _jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 120, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _bad_crc_zip() -> bytes:
    """A stored (uncompressed) member whose bytes no longer match the CRC in its header."""
    members = {**_valid_members(), "train/cat/crc.png": png_bytes(77)}
    data = bytearray(zip_bytes(members))
    original = png_bytes(77)
    at = bytes(data).index(original)
    data[at + len(original) // 2] ^= 0xFF
    return bytes(data)


def _assert_nothing_left(settings: Settings) -> None:
    """No dataset folder and no temp file stays after a refused upload."""
    tmp = settings.distill_home / "tmp"
    leftovers = list(tmp.rglob("*")) if tmp.exists() else []
    datasets = list(settings.datasets_dir.iterdir()) if settings.datasets_dir.exists() else []
    assert leftovers == [] and datasets == [], (leftovers, datasets)


BROKEN_MEMBERS = {
    "not-an-image": zip_bytes({**_valid_members(), "train/cat/fake.jpg": b"this is not a picture"}),
    "bad-crc": _bad_crc_zip(),
    "empty-file": zip_bytes({**_valid_members(), "train/dog/empty.png": b""}),
    "truncated": zip_bytes({**_valid_members(), "train/dog/cut.jpg": _jpeg((300, 200))[:400]}),
}


@pytest.mark.parametrize("kind", list(BROKEN_MEMBERS))
def test_a_broken_member_is_named_without_any_server_path(make_client: Callable[..., TestClient], kind: str) -> None:
    client = make_client()
    settings = _settings(client)

    response = _upload(client, BROKEN_MEMBERS[kind])

    assert response.status_code == 422, response.text
    body = response.text
    assert str(settings.distill_home) not in body and "DISTILL_HOME" not in body and "staging-" not in body
    assert not _ABSOLUTE.search(response.json()["error"]["message"]), body
    assert response.json()["error"]["field"] == "file"
    assert re.search(r"train/(cat|dog)/(fake\.jpg|crc\.png|empty\.png|cut\.jpg)", body), body
    _assert_nothing_left(settings)


def test_the_one_path_rule_keeps_routes_and_relative_names() -> None:
    text = "cannot identify image file '/srv/x/tmp/staging-1/tree/train/cat/a.jpg'; see POST /v1/datasets or C:\\a\\b"
    scrubbed = scrub_paths(text, {"/srv/x/tmp/staging-1/tree": ""})

    assert scrubbed == "cannot identify image file 'train/cat/a.jpg'; see POST /v1/datasets or <path>"
    assert scrub_paths("failed on /opt/data/f.bin and <data>/jobs/x") == "failed on <path> and <data>/jobs/x"


# --- bombs --------------------------------------------------------------------------------------------------


def _zeros_zip(name: str, size: int, with_tree: bool = True) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in (_valid_members() if with_tree else {}).items():
            archive.writestr(member, data)
        info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as sink:
            chunk = bytes(1024 * 1024)
            for _ in range(size // len(chunk)):
                sink.write(chunk)
    return buffer.getvalue()


@pytest.mark.parametrize("name,with_tree", [("train/cat/zeros.bin", True), ("train/cat/zeros.png", True),
                                            ("zeros.bin", False)])
def test_a_small_zip_with_a_huge_zero_member_is_refused_before_writing(
    make_client: Callable[..., TestClient], name: str, with_tree: bool
) -> None:
    client = make_client()  # the default bounds: 4 x 512 MB unpacked, ratio 200
    settings = _settings(client)
    archive = _zeros_zip(name, 96 * 1024 * 1024, with_tree)
    assert len(archive) < 1024 * 1024

    response = _upload(client, archive)

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "unsafe_archive"
    message = response.json()["error"]["message"]
    assert "times its packed size" in message and name in message, message
    _assert_nothing_left(settings)


def test_the_total_unpacked_size_is_bounded_by_its_own_setting(make_client: Callable[..., TestClient]) -> None:
    client = make_client(DISTILL_MAX_UNPACKED_MB=1)
    settings = _settings(client)
    noise = {f"train/{c}/{i}.png": _noise_png(400 + i) for c in ("a", "b") for i in range(2)}  # ~0.5 MB each

    response = _upload(client, zip_bytes(noise))

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "unsafe_archive", response.text
    _assert_nothing_left(settings)


def _noise_png(seed: int, side: int = 400) -> bytes:
    """An RGB PNG of random pixels: it does not compress, so its bytes are its size."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _lying_zip(declared: int) -> bytes:
    """A member whose headers (local and central) claim `declared` bytes while it inflates to 8 MB."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in _valid_members().items():
            archive.writestr(member, data)
        archive.writestr("train/dog/liar.png", bytes(8 * 1024 * 1024))
    data = bytearray(buffer.getvalue())
    name = b"train/dog/liar.png"
    for signature, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = 0
        while (at := bytes(data).find(signature, at)) != -1:
            name_at = at + (30 if signature == b"PK\x03\x04" else 46)
            if bytes(data[name_at:name_at + len(name)]) == name:
                struct.pack_into("<I", data, at + size_at, declared)
            at += 4
    return bytes(data)


def test_a_member_that_lies_about_its_size_is_cut_off(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    settings = _settings(client)

    response = _upload(client, _lying_zip(declared=100))

    assert response.status_code == 422, response.text
    assert "liar.png" in response.json()["error"]["message"]
    _assert_nothing_left(settings)


def _huge_png(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG")  # 1 bit a pixel: a few MB in memory here
    return buffer.getvalue()


def test_an_image_over_the_pixel_limit_gets_422_naming_it(make_client: Callable[..., TestClient]) -> None:
    client = make_client()  # default limit 50 M pixels; PIL's own default would let 64 M through
    settings = _settings(client)
    archive = zip_bytes({**_valid_members(), "train/cat/huge.png": _huge_png(8000, 8000)})
    assert len(archive) < 1024 * 1024

    response = _upload(client, archive)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_dataset" and error["field"] == "file"
    assert "train/cat/huge.png" in error["message"] and "8000 x 8000" in error["message"]
    _assert_nothing_left(settings)


# --- member kinds -------------------------------------------------------------------------------------------


def test_unknown_members_are_refused_and_metadata_is_skipped(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    settings = _settings(client)

    refused = _upload(client, zip_bytes({**_valid_members(), "train/cat/run.sh": b"#!/bin/sh\n"}))
    kept = _upload(client, zip_bytes({**_valid_members(), "README.md": b"# cats", "train/cat/labels.csv": b"a,b"}))

    assert refused.status_code == 422 and "train/cat/run.sh" in refused.json()["error"]["message"], refused.text
    assert kept.status_code == 201, kept.text
    stored = settings.datasets_dir / kept.json()["id"]
    assert sorted(p.name for p in stored.rglob("*") if p.is_file()) == ["0.png", "0.png", "1.png", "1.png"]


# --- how many at once ---------------------------------------------------------------------------------------


def test_past_the_check_slots_an_upload_gets_503_with_retry_after(make_client: Callable[..., TestClient]) -> None:
    client = make_client(DISTILL_UPLOAD_CHECKS=1)
    checks = client.app.state.upload_checks  # type: ignore[attr-defined]
    assert checks._free.acquire(blocking=False)  # another upload holds the one slot
    try:
        busy = _upload(client, image_folder_zip())
    finally:
        checks._free.release()
    after = _upload(client, image_folder_zip())

    assert busy.status_code == 503, busy.text
    assert busy.json()["error"]["code"] == "upload_checks_busy" and int(busy.headers["Retry-After"]) > 0
    assert after.status_code == 201, after.text
    assert list((_settings(client).distill_home / "tmp").iterdir()) == []
