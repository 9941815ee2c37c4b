"""Worker presence: a small JSON file per live worker under DISTILL_HOME/workers/.

Readiness needs "is any worker answering?" without a round trip through the
broker. Each worker rewrites its file every sweeper tick and removes it on a
clean shutdown; a reader treats files older than a few ticks as dead workers.
The file is the whole protocol, so it can later move to a table without
touching the task: {"worker_id", "pid", "hostname", "time" (unix seconds), "queue"}.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from store.queue import QUEUE_NAME
from store.settings import Settings


def presence_dir(settings: Settings) -> Path:
    return settings.distill_home / "workers"


def presence_path(settings: Settings, worker_id: str) -> Path:
    return presence_dir(settings) / f"{worker_id}.json"


def write_presence(settings: Settings, worker_id: str, now: float | None = None) -> Path:
    """Atomically (re)write this worker's file, so a reader never sees half a document."""
    path = presence_path(settings, worker_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "worker_id": worker_id,
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "time": time.time() if now is None else now,
        "queue": QUEUE_NAME,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document))
    tmp.replace(path)
    return path


def remove_presence(settings: Settings, worker_id: str) -> None:
    presence_path(settings, worker_id).unlink(missing_ok=True)
