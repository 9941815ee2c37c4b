"""What one worker process shares between its task, its heartbeat and its sweeper.

Built once per process from the environment (store.settings), or handed in by
tests, so the task function itself stays a plain function of a job id.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache

from celery import Celery
from sqlalchemy.orm import Session

from store.db import Database
from store.queue import get_celery
from store.settings import Settings, get_settings


def default_worker_id() -> str:
    """Unique per process and readable in the jobs table: host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class WorkerRuntime:
    settings: Settings
    sessions: Callable[[], Session]
    worker_id: str
    celery: Celery
    # Set when the worker is asked to stop: the running job yields at its next step.
    shutdown: threading.Event = field(default_factory=threading.Event)
    # When this worker last had no task in hand (None while it runs one); the sweeper reads it.
    idle_since: datetime | None = field(default_factory=lambda: datetime.now(timezone.utc))

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Mark the worker busy for the length of one task (solo pool: one at a time)."""
        self.idle_since = None
        try:
            yield
        finally:
            self.idle_since = datetime.now(timezone.utc)

    def idle_for(self, now: datetime) -> timedelta:
        """How long this worker has been waiting for a message; zero while it runs a task."""
        since = self.idle_since
        return timedelta(0) if since is None else max(timedelta(0), now - since)


@lru_cache
def get_runtime() -> WorkerRuntime:
    settings = get_settings()
    return WorkerRuntime(
        settings=settings,
        sessions=Database.from_settings(settings).sessions,
        worker_id=default_worker_id(),
        celery=get_celery(),
    )
