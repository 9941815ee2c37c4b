"""Worker presence: "is any worker answering?" without a round trip through the broker.

Every sweeper tick a worker refreshes its row in the `workers` table
(repository.touch_worker; /readyz reads repository.live_workers) and removes it
on a clean shutdown, so readiness sees a worker even while it is busy with a job.
"""

from __future__ import annotations

import functools
import os
import socket
from typing import Any

from core.models.device import describe_device
from store import repository
from worker.runtime import WorkerRuntime


@functools.cache
def this_device() -> dict[str, Any]:
    """What this worker process computes on (under `--gpus`, the one GPU its CUDA_VISIBLE_DEVICES shows);
    asked once: the answer does not change while the process lives."""
    return describe_device()


def announce(runtime: WorkerRuntime) -> None:
    """This worker is alive now, on this device."""
    with runtime.sessions() as session:
        repository.touch_worker(session, runtime.worker_id, socket.gethostname(), os.getpid(), device=this_device())


def withdraw(runtime: WorkerRuntime) -> None:
    """A clean exit: stop counting at once rather than when the last heartbeat ages out."""
    with runtime.sessions() as session:
        repository.remove_worker(session, runtime.worker_id)
