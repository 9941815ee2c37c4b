"""The one task: run job X.

The message only says "look at job X"; the SQL row is the truth. The task claims
the row with a conditional update (a duplicate or stale message finds nothing to
claim and returns), keeps a heartbeat lease while the engine runs, and always
ends the row in a terminal state - except when it no longer owns the row (the
sweeper gave the job to another attempt) or the worker is shutting down (the job
goes back to the queue at once); the next attempt resumes from the engine's
per-epoch checkpoints in the same job folder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from core.distributed.launch import RanksFailed
from core.errors import DistillError, JobCancelled, is_storage_full
from core.run import run_distillation, run_teacher
from core.publish.tracking import DEFAULT_EXPERIMENT, TrackingConfig
from store import repository
from store.artifacts import record_job_outputs, redact_paths
from store.models import JobKind, JobStatus
from store.queue import enqueue_job
from store.repository import JobError
from store.storage import FolderSync, get_storage, pull_prefix, working_folder
from store.settings import Settings
from worker.callbacks import WorkerCallbacks, json_safe
from worker.heartbeat import HeartbeatThread
from worker.logsetup import job_context
from worker.resolve import StoredUploads, parse_stored_spec
from worker.runtime import WorkerRuntime, get_runtime

log = logging.getLogger(__name__)

FINISH_RETRIES = 5
# How long a step that must reach the database waits out an outage (a restart, a failover) before failing.
DATABASE_OUTAGE_S = 60.0

T = TypeVar("T")


def with_database_retry(what: str, step: Callable[[], T], patience_s: float = DATABASE_OUTAGE_S) -> T:
    """Run `step`, retrying while the database is unreachable (connection errors only, with back-off):
    a job that trained for an hour must not fail because PostgreSQL restarted while it saved."""
    deadline = time.monotonic() + patience_s
    delay_s = 0.5
    while True:
        try:
            return step()
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + delay_s > deadline:
                raise
            log.warning("%s: database unreachable, retrying in %.1fs: %s", what, delay_s, type(exc).__name__)
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 5.0)


@dataclass
class Outcome:
    """How the run ended; `status` None means "not ours to finish" (lost lease or shutdown)."""

    status: JobStatus | None
    metrics: dict[str, Any] | None = None
    error: JobError | None = None


def run_job(job_id: str, runtime: WorkerRuntime | None = None) -> str:
    """Claim, run and finish one job; returns what happened (for logs and tests)."""
    runtime = runtime or get_runtime()
    with runtime.busy(), job_context(job_id):
        with runtime.sessions() as session:
            job = repository.claim_job(session, job_id, runtime.worker_id, runtime.settings.max_attempts)
        if job is None:
            log.info("not claimable (duplicate delivery, cancelled or already taken): nothing to do")
            return "skipped"
        log.info("claimed by %s, attempt %d", runtime.worker_id, job.attempts)
        storage = get_storage(runtime.settings)
        prefix = f"jobs/{job_id}"
        folder = working_folder(storage, runtime.settings, prefix)
        sync = FolderSync(storage, folder, prefix)
        callbacks = WorkerCallbacks(
            runtime.sessions,
            job_id,
            runtime.worker_id,
            progress_interval_s=runtime.settings.progress_interval_s,
            shutdown=runtime.shutdown,
            on_saved=sync.push,
        )
        started = time.monotonic()
        with HeartbeatThread(runtime.sessions, job_id, runtime.worker_id, runtime.settings.heartbeat_s):
            outcome = _execute(runtime, job_id, job.spec, callbacks, sync, JobKind(job.kind))
        if outcome.status is None:
            return "released"
        _finish(runtime, job_id, outcome)
        if job.kind == JobKind.teacher.value:
            _release_dependents(runtime, job_id)
        log.info("%s after %.1fs", outcome.status.value, time.monotonic() - started)
        return outcome.status.value


def _execute(
    runtime: WorkerRuntime, job_id: str, stored_spec: dict[str, Any], callbacks: WorkerCallbacks, sync: FolderSync,
    kind: JobKind = JobKind.distill,
) -> Outcome:
    """Run the engine in the job's working folder; with shared storage, start from what the store holds
    (another machine's checkpoints) and leave everything there, nothing only on this disk."""
    settings = runtime.settings
    try:
        fetched = pull_prefix(sync.storage, sync.prefix, sync.folder)
        if fetched:
            log.info("fetched %d files of earlier attempts from %s storage", fetched, sync.storage.kind)
        sync.mark_current()
        # The engine runs the spec as stored (upload ids); it reads the uploads through the store.
        spec = parse_stored_spec(stored_spec)
        uploads = StoredUploads(runtime.sessions, settings, sync.storage, retry=with_database_retry)
        sync.folder.mkdir(parents=True, exist_ok=True)
        if kind is JobKind.teacher:
            metrics = run_teacher(spec, sync.folder, callbacks, named_datasets=settings.dataset_roots,
                                  resolver=uploads)
        else:
            metrics = run_distillation(
                spec, sync.folder, callbacks, named_datasets=settings.dataset_roots, resolver=uploads,
                tracking=_tracking(settings, job_id),
            )
        sync.push(mirror=True)
        with_database_retry("record the artifacts", lambda: _record(runtime, job_id, sync.folder))
        sync.discard_local()
        return Outcome(JobStatus.succeeded, metrics=json_safe(metrics))
    except JobCancelled:
        callbacks.saved()
        if callbacks.lost:
            log.warning("stopped: the job belongs to another attempt now")
            return Outcome(None)
        if callbacks.interrupted and not callbacks.cancel_requested:
            _release(runtime, job_id)
            return Outcome(None)
        return Outcome(JobStatus.cancelled)
    except RanksFailed as exc:
        callbacks.saved()
        log.error("a rank died in %s: %s; the job goes back to the queue and resumes from its checkpoint",
                  callbacks.stage, exc)
        _retry(runtime, job_id)
        return Outcome(None)
    except DistillError as exc:
        callbacks.saved()
        log.warning("failed in %s: %s (%s, field %s)", callbacks.stage, exc.message, exc.code, exc.field)
        message = redact_paths(exc.message, settings)
        return Outcome(JobStatus.failed, error=JobError(exc.code, message, exc.field, where=callbacks.stage))
    except Exception as exc:
        if is_storage_full(exc):
            log.error("the data folder is full in %s: %s", callbacks.stage, exc)
            message = "the server's data folder is full; the job's files could not be written"
            return Outcome(JobStatus.failed, error=JobError("storage_full", message, None, where=callbacks.stage))
        log.exception("internal error in %s", callbacks.stage)
        message = redact_paths(f"{type(exc).__name__}: {exc}", settings)
        return Outcome(JobStatus.failed, error=JobError("internal_error", message, None, where=callbacks.stage))


def _record(runtime: WorkerRuntime, job_id: str, folder: Path) -> None:
    with runtime.sessions() as session:
        record_job_outputs(session, runtime.settings, job_id, folder)


def _release_dependents(runtime: WorkerRuntime, job_id: str) -> None:
    """A sweep's teacher ended: queue (or fail) the children waiting for it. If this fails, the
    sweeper's settle_waiting does it on its next tick."""
    try:
        with runtime.sessions() as session:
            queued = repository.release_dependents(session, job_id)
        for child_id in queued:
            enqueue_job(child_id, runtime.celery)
        if queued:
            log.info("teacher ready: queued %d waiting jobs", len(queued))
    except Exception:  # noqa: BLE001 - the sweeper settles waiting jobs too
        log.exception("could not release the jobs waiting for this teacher; the sweeper will")


def _tracking(settings: Settings, job_id: str) -> TrackingConfig | None:
    """The service's MLflow setting for this job (the run is tagged with the job id); None when off."""
    uri = settings.mlflow_tracking_uri.strip()
    if not uri:
        return None
    return TrackingConfig(uri, settings.mlflow_experiment or DEFAULT_EXPERIMENT, {"distill.job_id": job_id})


def _release(runtime: WorkerRuntime, job_id: str) -> None:
    """Worker shutdown mid-job: hand the job back now; the next worker resumes from its checkpoints."""
    try:
        with runtime.sessions() as session:
            released = repository.release_job(session, job_id, runtime.worker_id)
        if released:
            enqueue_job(job_id, runtime.celery)
            log.warning("stopped by worker shutdown; re-queued for the next worker, which resumes it")
            return
    except Exception:  # noqa: BLE001 - the broker or DB may be going down with us; the sweeper settles it
        log.exception("could not hand the job back")
    log.warning("stopped by worker shutdown; the sweeper re-queues it once its lease is stale")


def _retry(runtime: WorkerRuntime, job_id: str) -> None:
    """A multi-device attempt lost a rank: queue the job again now (the attempt counts, so a job whose ranks
    keep dying ends failed after max_attempts); the next attempt resumes from the last epoch checkpoint."""
    try:
        with runtime.sessions() as session:
            retried = repository.retry_job(session, job_id, runtime.worker_id)
        if retried:
            enqueue_job(job_id, runtime.celery)
            return
    except Exception:  # noqa: BLE001 - the sweeper re-queues it once its lease is stale
        log.exception("could not queue the job again; the sweeper will")


def _finish(runtime: WorkerRuntime, job_id: str, outcome: Outcome) -> None:
    """Write the terminal state, retrying through a short database outage so the row never stays running."""
    assert outcome.status is not None
    for attempt in range(1, FINISH_RETRIES + 1):
        try:
            with runtime.sessions() as session:
                repository.finish_job(
                    session, job_id, runtime.worker_id, outcome.status, metrics=outcome.metrics, error=outcome.error
                )
            return
        except repository.IllegalTransition as exc:
            log.warning("could not record %s: %s", outcome.status.value, exc)
            return
        except SQLAlchemyError as exc:
            if attempt == FINISH_RETRIES:
                log.error("could not record %s after %d tries; the sweeper will settle it: %s",
                          outcome.status.value, attempt, exc)
                return
            log.warning("could not record %s (try %d), retrying: %s", outcome.status.value, attempt, exc)
            time.sleep(min(2.0**attempt, 10.0))
