"""Temporary folders under DISTILL_HOME/tmp have an owner, and abandoned ones are removed.

Each upload gets one folder of its own (`upload-<hex>/`: the received file and its
staging tree), with an `.owner` record naming the process that made it (host, boot,
pid and the process's start time, so a reused pid is not mistaken for the owner).
A process killed mid-upload or mid-unpack leaves its folder behind; the API and every
worker sweep the folder at start-up and then periodically (`TempSweeper`) and remove
an entry when
- its owner ran on this machine since its last boot and that process is gone, or
- nothing in it changed for DISTILL_TMP_MAX_AGE_S (an owner on another machine, an
  entry from before owners were recorded, or one its live owner forgot).
A live upload's folder is never removed: its owner is alive and its file keeps changing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

from store.settings import Settings

log = logging.getLogger(__name__)

OWNER_FILE = ".owner"
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def tmp_root(settings: Settings) -> Path:
    """DISTILL_HOME/tmp: on the destination's filesystem, so keeping an upload is one rename."""
    path = settings.distill_home / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str | None:
    """A process's start time since boot (clock ticks, /proc/<pid>/stat field 22); None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name; field 22 overall


def this_process() -> dict[str, object]:
    """The owner record of the calling process."""
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(), "start": _start_ticks(os.getpid())}


def new_owned_folder(settings: Settings, prefix: str) -> Path:
    """An empty folder `<prefix>-<hex>` under DISTILL_HOME/tmp, owned by this process."""
    folder = tmp_root(settings) / f"{prefix}-{uuid.uuid4().hex}"
    folder.mkdir()
    (folder / OWNER_FILE).write_text(json.dumps(this_process()))
    return folder


def owner_gone(folder: Path) -> bool:
    """True only when the folder's owner ran here since the last boot and has exited (or its pid was reused)."""
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return False
    if owner.get("host") != socket.gethostname() or owner.get("boot") != _boot_id() or not owner.get("boot"):
        return False
    pid = owner.get("pid")
    return not isinstance(pid, int) or _start_ticks(pid) != owner.get("start")


def _newest_change(entry: Path) -> float:
    """The latest modification time of the entry or anything inside it (an upload in progress keeps writing)."""
    newest = entry.lstat().st_mtime
    if entry.is_dir() and not entry.is_symlink():
        for parent, dirs, files in os.walk(entry):
            for name in (*dirs, *files):
                try:
                    newest = max(newest, os.lstat(os.path.join(parent, name)).st_mtime)
                except OSError:
                    continue
    return newest


def sweep_abandoned(settings: Settings, now: float | None = None) -> list[str]:
    """Remove abandoned entries under DISTILL_HOME/tmp (see the module doc); the names removed."""
    root = settings.distill_home / "tmp"
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    removed: list[str] = []
    for entry in sorted(root.iterdir()):
        try:
            stale = (entry.is_dir() and owner_gone(entry)) or now - _newest_change(entry) > settings.tmp_max_age_s
        except FileNotFoundError:  # its owner finished meanwhile
            continue
        if not stale:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
    if removed:
        log.info("removed %d abandoned temp entr%s: %s", len(removed), "y" if len(removed) == 1 else "ies",
                 ", ".join(removed[:10]))
    return removed


class TempSweeper:
    """`sweep_abandoned` at `start()` (before it returns: a restart after a crash begins clean), then
    every `interval_s` in a daemon thread, until `stop()`."""

    def __init__(self, settings: Settings, interval_s: float | None = None) -> None:
        self.settings = settings
        self.interval_s = interval_s or min(600.0, max(1.0, settings.tmp_max_age_s / 4))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="temp-sweeper", daemon=True)

    def start(self) -> TempSweeper:
        self._sweep()
        self._thread.start()
        return self

    def _sweep(self) -> None:
        try:
            sweep_abandoned(self.settings)
        except Exception:  # a sweep must never take its process down; the next one retries
            log.exception("temp sweep failed; retrying in %.0fs", self.interval_s)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sweep()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
