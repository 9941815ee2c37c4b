"""Temp files have an owner: an API killed (SIGKILL) mid-upload or mid-unpack leaves a folder that the next
start - of the API, or of a worker - removes; a live upload's folder is never touched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from store.settings import Settings
from store.temp_files import OWNER_FILE, new_owned_folder, sweep_abandoned
from tests.e2e.conftest import Stack, wait_until

BOUNDARY = "leftoverboundary42"


def _entries(home: Path) -> list[Path]:
    tmp = home / "tmp"
    return sorted(tmp.rglob("*")) if tmp.exists() else []


def _slow_body(total_mib: int, stop: threading.Event) -> Iterator[bytes]:
    """A multipart body whose file part trickles in a MiB at a time, until the server goes away."""
    yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.zip\"\r\n"
           "Content-Type: application/zip\r\n\r\n").encode()
    for _ in range(total_mib):
        if stop.is_set():
            return
        yield os.urandom(1024 * 1024)
        time.sleep(0.05)


def _post_in_background(base_url: str, content: object, headers: dict[str, str]) -> threading.Thread:
    def send() -> None:
        try:
            with httpx.Client(base_url=base_url, timeout=120) as client:
                client.post("/v1/datasets", content=content, headers=headers)  # type: ignore[arg-type]
        except httpx.HTTPError:
            pass  # the server was killed under it: expected

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def _kill_api(stack: Stack) -> None:
    assert stack.api is not None
    stack.api.popen.send_signal(signal.SIGKILL)
    stack.api.popen.wait(timeout=30)


def _unpack_heavy_zip(path: Path) -> None:
    """A valid-looking zip of 60 x 4 MB stored members: unpacking it takes long enough to be caught."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(60):
            archive.writestr(f"train/{'ab'[i % 2]}/{i}.png", os.urandom(4 * 1024 * 1024))


def test_a_killed_api_leaves_nothing_after_the_next_start(
    sqlite_url: str, stacks: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = stacks(sqlite_url)
    stack.start_api()
    base_url = str(stack.client.base_url)  # type: ignore[union-attr]

    # 1. mid-upload: the file part is arriving when the API dies
    stop = threading.Event()
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    sender = _post_in_background(base_url, _slow_body(300, stop), headers)
    wait_until(lambda: any(p.is_file() and p.stat().st_size > 4 * 1024 * 1024
                           for p in _entries(stack.home)), 60, "the upload to be half received")
    _kill_api(stack)
    stop.set()
    sender.join(timeout=30)
    assert any(p.is_file() for p in _entries(stack.home))  # the crash did leave it

    stack.start_api()
    assert _entries(stack.home) == [], _entries(stack.home)

    # 2. mid-unpack: the archive is being written out in a checking process when the API dies
    archive = tmp_path / "heavy.zip"
    _unpack_heavy_zip(archive)
    data = archive.read_bytes()
    files = {"file": ("heavy.zip", data)}
    base_url = str(stack.client.base_url)  # type: ignore[union-attr]
    upload = threading.Thread(target=_quiet_post, args=(base_url, files), daemon=True)
    upload.start()
    wait_until(lambda: any("staging-" in str(p) and p.suffix == ".png" for p in _entries(stack.home)), 120,
               "the archive to be half unpacked", interval_s=0.01)
    _kill_api(stack)
    upload.join(timeout=30)
    time.sleep(1.0)  # the checking process dies with its parent; give the kernel a moment
    assert any("staging-" in str(p) for p in _entries(stack.home))

    stack.start_worker()  # a worker's start sweeps too (the API may be the one that stays down)
    wait_until(lambda: _entries(stack.home) == [], 30, "the worker's start-up sweep")


def _quiet_post(base_url: str, files: dict[str, tuple[str, bytes]]) -> None:
    try:
        with httpx.Client(base_url=base_url, timeout=120) as client:
            client.post("/v1/datasets", files=files)
    except httpx.HTTPError:
        pass


def test_the_sweep_keeps_live_owners_and_removes_dead_or_old_entries(settings: Callable[..., Settings]) -> None:
    configured = settings(DISTILL_TMP_MAX_AGE_S=3600)
    live = new_owned_folder(configured, "upload")
    dead = new_owned_folder(configured, "upload")
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owner = json.loads((dead / OWNER_FILE).read_text())
    (dead / OWNER_FILE).write_text(json.dumps({**owner, "pid": int(child.stdout)}))  # a process that has exited
    legacy = configured.distill_home / "tmp" / "upload-abc.part"  # from before owners: judged by age
    legacy.write_bytes(b"x")
    fresh_legacy = configured.distill_home / "tmp" / "staging-def"
    fresh_legacy.mkdir()
    old = time.time() - 7200
    os.utime(legacy, (old, old))

    removed = sweep_abandoned(configured)

    assert sorted(removed) == sorted([dead.name, legacy.name])
    assert live.is_dir() and fresh_legacy.is_dir()
    assert sweep_abandoned(configured, now=time.time() + 7200) == sorted([fresh_legacy.name, live.name])
