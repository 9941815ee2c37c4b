"""Worker presence: "is any worker answering?" without a round trip through the broker.

Every sweeper tick a worker refreshes its row in the `workers` table
(repository.touch_worker; /readyz reads repository.live_workers) and removes it
on a clean shutdown, so readiness sees a worker even while it is busy with a job.
"""

from __future__ import annotations

import os
import socket

from store import repository
from worker.runtime import WorkerRuntime


def announce(runtime: WorkerRuntime) -> None:
    """This worker is alive now."""
    with runtime.sessions() as session:
        repository.touch_worker(session, runtime.worker_id, socket.gethostname(), os.getpid())


def withdraw(runtime: WorkerRuntime) -> None:
    """A clean exit: stop counting at once rather than when the last heartbeat ages out."""
    with runtime.sessions() as session:
        repository.remove_worker(session, runtime.worker_id)
