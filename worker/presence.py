"""Worker presence: "is any worker answering?" without a round trip through the broker.

Every sweeper tick a worker refreshes its row in the `workers` table
(repository.touch_worker; readers use repository.live_workers) and removes it
on a clean shutdown, so readiness sees a worker even while it is busy with a
job. During the move from files to the table it also rewrites
DISTILL_HOME/workers/<worker_id>.json ({"worker_id", "pid", "hostname",
"time" (unix seconds), "queue"}), which /readyz still reads; the file goes once
the API reads the table.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from store import repository
from store.queue import QUEUE_NAME
from store.settings import Settings
from worker.runtime import WorkerRuntime


def presence_path(settings: Settings, worker_id: str) -> Path:
    return settings.distill_home / "workers" / f"{worker_id}.json"


def announce(runtime: WorkerRuntime) -> None:
    """This worker is alive now: refresh its row and its file."""
    write_presence(runtime.settings, runtime.worker_id)
    with runtime.sessions() as session:
        repository.touch_worker(session, runtime.worker_id, socket.gethostname(), os.getpid())


def withdraw(runtime: WorkerRuntime) -> None:
    """A clean exit: stop counting at once rather than when the last heartbeat ages out."""
    presence_path(runtime.settings, runtime.worker_id).unlink(missing_ok=True)
    with runtime.sessions() as session:
        repository.remove_worker(session, runtime.worker_id)


def write_presence(settings: Settings, worker_id: str, now: float | None = None) -> Path:
    """Atomically (re)write the presence file, so a reader never sees half a document."""
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
