"""Job repository: the only code that changes a job's state, and every read and write of the service's rows.

CONTRACT (api/ and worker/ code against it, through `from store import repository`):
all functions take a SQLAlchemy `Session` first and commit themselves unless
noted, returning detached-safe ORM objects (expire_on_commit=False sessions).
A function that fails rolls the session back before raising, so the session
stays usable. The poll reads (`polls`) take a plain `Connection` instead and
neither begin nor commit a transaction of their own.

One module per job, so each can be read alone:
  states         the state machine (`transition`, ALLOWED_TRANSITIONS) and the fresh read after a change
  errors         what callers catch (NotFound, IllegalTransition, LeaseLost, IdempotencyConflict), JobError
  ownership      which rows a caller's API key may see; idempotency keys per owner
  paging         keyset paging: cursor format and check, newest-first order, cutting a page
  idempotency    request digest and create-once (replay or conflict) for jobs and sweeps
  ids            ids of new rows
  jobs           create, get, list and count job records (ORM)
  polls          the poll reads on a plain Connection (versions, display rows, pages)
  leases         a worker's claim, heartbeat, finish and release; stale-lease requeue; cancel
  dependencies   a sweep's children waiting for its teacher job
  artifact_rows  the rows recording a job's artifacts (files: `store.artifacts`)
  uploads        uploaded models and datasets
  workers        worker presence

This module re-exports the public names, so callers never depend on the split.
"""

from __future__ import annotations

from store.repository.artifact_rows import add_artifact, get_artifact
from store.repository.dependencies import release_dependents, settle_waiting, teacher_model_id
from store.repository.errors import IdempotencyConflict, IllegalTransition, JobError, LeaseLost, NotFound
from store.repository.idempotency import request_digest
from store.repository.ids import new_dataset_id, new_job_id, new_model_id
from store.repository.jobs import count_jobs_by_status, create_job, get_job, list_jobs
from store.repository.leases import (
    CLAIM_STAGE,
    claim_job,
    completed_progress,
    finish_job,
    heartbeat,
    release_job,
    request_cancel,
    requeue_stale_jobs,
    retry_job,
)
from store.repository.ownership import owned_idempotency_key
from store.repository.polls import (
    JOB_FULL_COLUMNS,
    JOB_ID_AT,
    JOB_SUMMARY_COLUMNS,
    JOB_VERSION_AT,
    Compiled,
    JobStamp,
    PollStatements,
    VersionLookup,
    job_stamp,
    list_job_rows,
    list_job_stamps,
    read_artifact_rows,
    read_job_row,
)
from store.repository.states import ALLOWED_TRANSITIONS
from store.repository.uploads import create_dataset, create_model, get_dataset, get_model, list_datasets, list_models
from store.repository.workers import live_workers, present_workers, remove_worker, touch_worker

__all__ = [
    "ALLOWED_TRANSITIONS",
    "CLAIM_STAGE",
    "JOB_FULL_COLUMNS",
    "JOB_ID_AT",
    "JOB_SUMMARY_COLUMNS",
    "JOB_VERSION_AT",
    "Compiled",
    "IdempotencyConflict",
    "IllegalTransition",
    "JobError",
    "JobStamp",
    "LeaseLost",
    "NotFound",
    "PollStatements",
    "VersionLookup",
    "add_artifact",
    "claim_job",
    "completed_progress",
    "count_jobs_by_status",
    "create_dataset",
    "create_job",
    "create_model",
    "finish_job",
    "get_artifact",
    "get_dataset",
    "get_job",
    "get_model",
    "heartbeat",
    "job_stamp",
    "list_datasets",
    "list_job_rows",
    "list_job_stamps",
    "list_jobs",
    "list_models",
    "live_workers",
    "present_workers",
    "new_dataset_id",
    "new_job_id",
    "new_model_id",
    "owned_idempotency_key",
    "read_artifact_rows",
    "read_job_row",
    "release_dependents",
    "release_job",
    "retry_job",
    "remove_worker",
    "request_cancel",
    "request_digest",
    "requeue_stale_jobs",
    "settle_waiting",
    "teacher_model_id",
    "touch_worker",
]
