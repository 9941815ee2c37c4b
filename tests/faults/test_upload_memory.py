"""Validation out of the API's memory: four concurrent uploads of large-pixel images, measured on a real
`distill api` process (its RSS read from /proc), must leave the API near its baseline during and after."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.e2e.conftest import Stack

MIB = 1024 * 1024
SIDE = 6000  # 36 M pixels: under the default limit (50 M), 108 MB a frame once decoded at full size


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc (kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def large_pixel_zip(side: int = SIDE, per_class: int = 2) -> bytes:
    """A valid ImageFolder zip whose JPEGs are `side` x `side` (a gradient: small files, many pixels)."""
    from PIL import Image

    ramp = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    buffer = io.BytesIO()
    ramp.save(buffer, format="JPEG", quality=70)
    jpeg = buffer.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name in ("cat", "dog"):
            for i in range(per_class):
                archive.writestr(f"train/{name}/{i}.jpg", jpeg)
    return out.getvalue()


class Sampler(threading.Thread):
    """The API's RSS every 20 ms until stopped; `peak` is the largest seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            time.sleep(0.02)


def upload_concurrently(base_url: str, archive: bytes, count: int) -> list[int]:
    statuses: list[int] = []

    def one(i: int) -> None:
        with httpx.Client(base_url=base_url, timeout=300) as client:
            response = client.post("/v1/datasets", files={"file": (f"big{i}.zip", archive)})
            statuses.append(response.status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_four_concurrent_large_pixel_uploads_leave_the_api_near_its_baseline(
    sqlite_url: str, stacks: Callable[..., Stack]
) -> None:
    stack = stacks(sqlite_url, DISTILL_UPLOAD_CHECKS="4")
    stack.start_api()
    assert stack.api is not None and stack.client is not None
    archive = large_pixel_zip()
    warm = stack.client.post("/v1/datasets", files={"file": ("warm.zip", large_pixel_zip(side=64))})
    assert warm.status_code == 201, warm.text  # imports and the checking server are up: the baseline is steady
    baseline = rss_mib(stack.api.pid)
    sampler = Sampler(stack.api.pid)
    sampler.start()

    statuses = upload_concurrently(str(stack.client.base_url), archive, 4)

    sampler.done.set()
    sampler.join()
    time.sleep(1.0)
    after = rss_mib(stack.api.pid)
    assert statuses == [201] * 4, statuses
    # Decoding one of these frames in the API takes 108 MB; four uploads of four frames each, far more.
    assert sampler.peak - baseline < 100, (baseline, sampler.peak, after)
    assert after - baseline < 40, (baseline, sampler.peak, after)


def many_tensors_safetensors(path: Path, count: int = 100_000) -> bytes:
    """A safetensors file of `count` tiny tensors: a big header and many objects once loaded."""
    import torch
    from safetensors.torch import save_file

    save_file({f"layer{i}.weight": torch.zeros(4) for i in range(count)}, str(path))
    return path.read_bytes()


def test_a_weights_file_of_many_tensors_leaves_the_api_near_its_baseline(
    sqlite_url: str, stacks: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = stacks(sqlite_url)
    stack.start_api()
    assert stack.api is not None and stack.client is not None
    data = many_tensors_safetensors(tmp_path / "many.safetensors")
    warm = stack.client.post("/v1/models", data={"arch": "resnet20"}, files={"file": ("w.safetensors", b"junk")})
    assert warm.status_code == 422, warm.text  # imports and the checking server are up
    baseline = rss_mib(stack.api.pid)

    response = stack.client.post("/v1/models", data={"arch": "resnet20", "num_classes": "10", "in_channels": "3"},
                                  files={"file": ("many.safetensors", data)})

    time.sleep(1.0)
    after = rss_mib(stack.api.pid)
    assert response.status_code == 422 and response.json()["error"]["field"] == "file", response.text
    assert after - baseline < 40, (baseline, after)
