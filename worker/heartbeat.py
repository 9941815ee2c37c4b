"""The lease on a running job, kept alive by a thread.

The engine calls back only between steps, and one evaluation or rendering pass
can outlast the stale timeout; a separate thread refreshes the heartbeat no
matter what the training thread is doing, so only a dead process loses its job.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from types import TracebackType

from sqlalchemy.orm import Session

from store import repository

log = logging.getLogger(__name__)


class HeartbeatThread:
    """`with HeartbeatThread(...):` refreshes the job's heartbeat every `interval_s` inside the block."""

    def __init__(self, sessions: Callable[[], Session], job_id: str, worker_id: str, interval_s: float) -> None:
        self._sessions = sessions
        self.job_id = job_id
        self.worker_id = worker_id
        self.interval_s = interval_s
        self.beats = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        context = contextvars.copy_context()  # keeps the job id on this thread's log lines
        self._thread = threading.Thread(
            target=context.run, args=(self._loop,), name=f"heartbeat-{self.job_id}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.interval_s))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                with self._sessions() as session:
                    repository.heartbeat(session, self.job_id, self.worker_id)
                self.beats += 1
            except repository.LeaseLost as exc:
                log.warning("heartbeat stopped: %s", exc)
                return
            except Exception as exc:  # noqa: BLE001 - a failed beat must not kill the lease thread
                log.warning("heartbeat failed (will retry in %.1fs): %s", self.interval_s, exc)

    def __enter__(self) -> HeartbeatThread:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
