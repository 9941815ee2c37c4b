"""The engine's callbacks as a worker implements them: progress to SQL, cancellation from SQL.

The engine calls these after every step, so each one is throttled: progress is
written at most every `progress_interval_s` and the status read at most every
`cancel_poll_s`. A database hiccup is logged and skipped rather than failing a
long training run; the heartbeat thread and the sweeper own the lease.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core.train.callbacks import Progress
from store import repository
from store.models import JobStatus

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.3
FIRST_STAGE = "preparing_data"  # the stage claim_job sets


def json_safe(value: Any) -> Any:
    """NaN and infinities become null: PostgreSQL's JSON type refuses them and clients choke on them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def progress_payload(progress: Progress) -> dict[str, Any]:
    return json_safe(
        {
            "stage": progress.stage,
            "epoch": progress.epoch,
            "total_epochs": progress.total_epochs,
            "step": progress.step,
            "total_steps": progress.total_steps,
            "fraction": round(float(progress.fraction), 4),
            "metrics": dict(progress.metrics),
        }
    )


class WorkerCallbacks:
    """core.train.callbacks.RunCallbacks backed by the job row.

    Besides a user's cancel, the engine is also stopped when the worker shuts down
    (`interrupted`) or when the row no longer belongs to this worker (`lost`, e.g. the
    sweeper re-queued it after heartbeats failed); the task tells these apart afterwards.
    """

    def __init__(
        self,
        sessions: Callable[[], Session],
        job_id: str,
        worker_id: str,
        *,
        progress_interval_s: float,
        shutdown: threading.Event | None = None,
        on_saved: Callable[[], None] | None = None,
        cancel_poll_s: float = CANCEL_POLL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self.job_id = job_id
        self.worker_id = worker_id
        self._progress_interval_s = progress_interval_s
        self._shutdown = shutdown or threading.Event()
        self._on_saved = on_saved
        self._cancel_poll_s = cancel_poll_s
        self._clock = clock
        self._last_progress_at = -math.inf
        self._last_poll_at = -math.inf
        self.stage = FIRST_STAGE
        self.cancel_requested = False
        self.lost = False
        self.interrupted = False

    def on_stage(self, stage: str) -> None:
        self.stage = stage
        log.info("stage %s", stage)
        self.saved()  # the previous stage's results (weights, run state) are on disk now
        self._write(stage=stage)

    def on_progress(self, progress: Progress) -> None:
        if progress.step == progress.total_steps and progress.total_steps > 0:
            self.saved()  # an epoch ended: its checkpoint was just written
        now = self._clock()
        if now - self._last_progress_at < self._progress_interval_s:
            return
        self._last_progress_at = now
        self._write(stage=progress.stage, progress=progress_payload(progress))

    def saved(self) -> None:
        """Files were written: let the host copy them to shared storage (a failure only delays that)."""
        if self._on_saved is None:
            return
        try:
            self._on_saved()
        except Exception as exc:  # noqa: BLE001 - a storage hiccup must not fail a long run; the next epoch retries
            log.warning("could not push the job's files to storage (will retry): %s", exc)

    def should_cancel(self) -> bool:
        if self._shutdown.is_set():
            self.interrupted = True
            return True
        now = self._clock()
        if now - self._last_poll_at >= self._cancel_poll_s:
            self._last_poll_at = now
            self._poll()
        return self.cancel_requested or self.lost

    def _poll(self) -> None:
        try:
            with self._sessions() as session:
                job = repository.get_job(session, self.job_id)
        except SQLAlchemyError as exc:
            log.warning("could not read the job status (will retry): %s", exc)
            return
        status = JobStatus(job.status)
        if job.worker_id != self.worker_id or status not in (JobStatus.running, JobStatus.cancelling):
            if not self.lost:
                log.warning("job is now %s owned by %s; this worker stops working on it", status.value, job.worker_id)
            self.lost = True
        elif status is JobStatus.cancelling and not self.cancel_requested:
            log.info("cancel requested; stopping at the next step")
            self.cancel_requested = True

    def _write(self, stage: str | None = None, progress: dict[str, Any] | None = None) -> None:
        try:
            with self._sessions() as session:
                status = repository.heartbeat(session, self.job_id, self.worker_id, stage=stage, progress=progress)
        except repository.LeaseLost as exc:
            log.warning("%s; this worker stops working on it", exc)
            self.lost = True
            return
        except SQLAlchemyError as exc:
            log.warning("could not record stage/progress (skipped): %s", exc)
            return
        if status is JobStatus.cancelling:
            self.cancel_requested = True
