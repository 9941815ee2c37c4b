"""The sweeper: a daemon thread in every worker that keeps jobs from getting stuck.

Every tick it
- re-queues jobs whose worker stopped heart-beating (the repository decides:
  another attempt, cancelled, or failed `worker_lost`) and enqueues them after
  that commit;
- re-enqueues jobs that sit `queued` longer than the stale timeout while this
  worker has had nothing to do for as long: that covers a message lost between
  the API's commit and its enqueue, or a broker that lost its messages. A busy
  worker never re-sends: a job behind a deep queue is waiting, not lost, and
  re-sending the whole backlog from every worker flooded the queue with
  duplicates. Duplicates are harmless (claiming is conditional), but to keep
  the queue small each job is re-sent with exponential back-off;
- queues jobs still `waiting` on a teacher job that has ended (its worker died
  between finishing the teacher and releasing them);
- refreshes this worker's presence (worker.presence).
Several workers may sweep at once: every state change is a conditional update.

After a database outage, staleness is not judged until the sweeper has seen the
database answer for one whole stale period: during the outage no worker could
heart-beat, so every running job looks lost the moment the database returns,
while its worker is still training and beats again within DISTILL_HEARTBEAT_S.
Re-queuing it then would throw the run away (and could spend its last attempt);
waiting one stale period lets live workers beat first, and a job whose worker
really died is re-queued one period later than usual.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from datetime import datetime, timedelta, timezone

from sqlalchemy.exc import SQLAlchemyError

from store import repository
from store.models import JobStatus
from store.queue import enqueue_job
from worker.logsetup import job_context
from worker.presence import announce, withdraw
from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

PAGE_SIZE = 100


def _as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; they are UTC by construction."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class Sweeper:
    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime
        self.interval_s = runtime.settings.heartbeat_s
        self.stale_after = timedelta(seconds=runtime.settings.stale_after_s)
        self._resent: dict[str, tuple[datetime, int]] = {}  # job id -> (last re-send, how many)
        self._database_failed = False  # the last tick could not reach the database
        self._database_back_at: datetime | None = None  # when it answered again after an outage
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._loop,), name="sweeper", daemon=True
        )
        self._thread.start()
        log.info("sweeper started (every %.1fs, stale after %.0fs)", self.interval_s, self.stale_after.total_seconds())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.interval_s))
        try:
            withdraw(self.runtime)
        except Exception:  # noqa: BLE001 - exiting anyway; the presence row ages out by itself
            log.exception("could not withdraw worker presence")

    def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the sweeper must outlive a database or broker outage
                log.exception("sweep failed; retrying in %.1fs", self.interval_s)
            if self._stop.wait(self.interval_s):
                return

    def tick(self, now: datetime | None = None) -> list[str]:
        """One sweep; returns the job ids it enqueued. A database error is remembered (then raised)."""
        try:
            return self._sweep(now or datetime.now(timezone.utc))
        except SQLAlchemyError:
            self._database_failed = True
            raise

    def _sweep(self, now: datetime) -> list[str]:
        announce(self.runtime)
        requeued = self._requeue_stale(now)
        for job_id in requeued:
            with job_context(job_id):
                log.warning("job %s lost its worker; re-queued for another attempt", job_id)
                self._send(job_id, now)
        with self.runtime.sessions() as session:
            released = repository.settle_waiting(session, finished_before=now - self.stale_after)
        for job_id in released:
            with job_context(job_id):
                log.warning("job %s: its teacher had ended without releasing it; queued now", job_id)
                self._send(job_id, now)
        requeued = [*requeued, *released]
        if self.runtime.idle_for(now) < self.stale_after:  # busy: its own queue is not empty
            return requeued
        resent = [job_id for job_id in self._unclaimed(now) if job_id not in requeued]
        for job_id in resent:
            with job_context(job_id):
                log.warning("job %s queued for a while without a worker claiming it; enqueued again", job_id)
                self._send(job_id, now)
        return [*requeued, *resent]

    def _requeue_stale(self, now: datetime) -> list[str]:
        """Jobs whose worker stopped heart-beating, back to the queue; none until the database has been
        back for a stale period after an outage (see the module doc)."""
        if self._database_failed:
            self._database_failed, self._database_back_at = False, now
            log.warning("database reachable again; judging stale jobs from %s on", now + self.stale_after)
        if self._database_back_at is not None and now - self._database_back_at < self.stale_after:
            return []
        with self.runtime.sessions() as session:
            return repository.requeue_stale_jobs(
                session, stale_before=now - self.stale_after, max_attempts=self.runtime.settings.max_attempts
            )

    def _send(self, job_id: str, now: datetime) -> None:
        enqueue_job(job_id, self.runtime.celery)
        _, count = self._resent.get(job_id, (now, 0))
        self._resent[job_id] = (now, count + 1)

    def _unclaimed(self, now: datetime) -> list[str]:
        """Queued jobs untouched for longer than the stale timeout, minus those re-sent too recently."""
        due: list[str] = []
        still_queued: set[str] = set()
        cursor: str | None = None
        with self.runtime.sessions() as session:
            while True:
                page, cursor = repository.list_jobs(session, JobStatus.queued, PAGE_SIZE, cursor)
                for job in page:
                    still_queued.add(job.id)
                    if now - _as_utc(job.updated_at) < self.stale_after:
                        continue
                    last, count = self._resent.get(job.id, (None, 0))
                    if last is None or now - last >= self.stale_after * (2**count):
                        due.append(job.id)
                if cursor is None:
                    break
        self._resent = {job_id: sent for job_id, sent in self._resent.items() if job_id in still_queued}
        return due
