"""The data folder full: a running job fails with `storage_full`, uploads get 507, the service keeps answering,
nothing half-written is recorded, and once space is back the next job succeeds.

DISTILL_HOME is a small tmpfs mounted for the test (a real ENOSPC from the kernel, not a stand-in).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from store.db import upgrade_database
from tests.api.support import npz_bytes
from tests.e2e.conftest import TERMINAL
from tests.faults.support import assert_artifacts_complete, private_stack
from tests.worker.jobspecs import tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.redis]

TMPFS_SIZE = "16m"
LEFT_FREE_BYTES = 24 * 1024  # room for run_state.json, not for a checkpoint or weights


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.fail(f"this test mounts a small tmpfs as DISTILL_HOME and needs to run as root: {mounted.stderr}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def fill(folder: Path, leave_free_bytes: int) -> Path:
    """A filler file that leaves about `leave_free_bytes` free on the folder's filesystem."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    filler = folder / "filler.bin"
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, free - leave_free_bytes))
    return filler


def test_a_full_data_folder_fails_the_job_with_storage_full_and_uploads_get_507(
    small_disk: Path, tmp_path: Path, sqlite_url: str, redis_url: str
) -> None:
    upgrade_database(sqlite_url)  # the database lives outside the full disk, as PostgreSQL would
    stack = private_stack(tmp_path / "stack", sqlite_url, redis_url.rsplit("/", 1)[0] + "/13",
                          DISTILL_HOME=str(small_disk))
    try:
        stack.start()
        filler = fill(small_disk, LEFT_FREE_BYTES)
        job_id = stack.post_job(tiny_spec(name="no-room"))["id"]
        failed = stack.wait_for_status(job_id, TERMINAL, timeout_s=180)

        rng = np.random.default_rng(0)
        big = npz_bytes(x=rng.integers(0, 255, (400, 16, 16), dtype=np.uint8), y=np.arange(400) % 4)
        upload = stack.client.post("/v1/datasets", files={"file": ("big.npz", big)})
        health = stack.client.get("/healthz")
        listed = stack.client.get("/v1/jobs")
        datasets = stack.client.get("/v1/datasets")

        filler.unlink()  # space is back: the service carries on by itself
        recovered = stack.wait_for_status(stack.post_job(tiny_spec(name="room-again"))["id"], TERMINAL, 180)
        assert_artifacts_complete(stack.client, recovered)
    finally:
        stack.close()

    assert failed["status"] == "failed", f"{failed}\n{stack.logs()}"
    assert failed["error"]["code"] == "storage_full", failed["error"]
    assert str(small_disk) not in failed["error"]["message"]
    assert failed["artifacts"] == []  # nothing half-written was recorded
    assert upload.status_code == 507, upload.text
    assert upload.json()["error"]["code"] == "storage_full"
    assert health.status_code == 200 and listed.status_code == 200
    assert [job["id"] for job in listed.json()["items"]] == [job_id]
    assert datasets.json()["items"] == []
    assert recovered["status"] == "succeeded", f"{recovered}\n{stack.logs()}"
