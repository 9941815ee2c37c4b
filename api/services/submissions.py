"""Submitting work: a job or a sweep is checked, committed, then enqueued, in that order.

The row is committed before the message is sent, so a worker never receives a job
that does not exist yet. When the broker refuses the message the row stays queued
and the client still gets its job: the worker's sweeper re-sends queued jobs that
nobody claimed (worker.sweeper), so a retry by the client would only duplicate it.
An `Idempotency-Key` seen with the same body returns what it created before, and
sends nothing again.
"""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy.orm import Session

from api.services.spec_checks import check_no_control_characters, check_spec_against_server
from api.services.sweep_plans import plan_sweep
from api.sweep_schemas import SweepRequest
from core.spec import JobSpec
from store import repository
from store.models import Job, Sweep
from store.queue import enqueue_job
from store.settings import Settings
from store.sweeps import create_sweep

log = logging.getLogger(__name__)


def submit_job(
    spec: JobSpec, *, session: Session, settings: Settings, celery: Celery, owner: str | None, scope: str | None,
    idempotency_key: str | None,
) -> tuple[Job, bool]:
    """(job, created): a new job owned by `owner`, or the one this Idempotency-Key already created.

    `scope` is what the caller may use (None: anything), which the dataset and teacher weights
    named by the spec are checked against."""
    spec = with_model_inputs(spec, session, scope)
    document = spec.model_dump(mode="json")
    check_no_control_characters(document)
    check_spec_against_server(spec, session=session, settings=settings, owner=scope)
    job, created = repository.create_job(session, document, spec.name, idempotency_key, owner=owner)
    if not created:
        log.info("job %s: replayed for Idempotency-Key %r; not enqueued again", job.id, idempotency_key)
        return job, False
    try:
        enqueue_job(job.id, celery)
    except Exception:
        # The row is committed and stays queued: the worker's sweeper re-enqueues queued jobs left untouched
        # past the stale timeout, so the client still gets its job (201) instead of an error it would retry.
        log.exception("job %s: committed but could not be enqueued; the sweeper will re-send it", job.id)
    else:
        log.info("job %s: enqueued", job.id)
    return job, True


def with_model_inputs(spec: JobSpec, session: Session, scope: str | None) -> JobSpec:
    """The spec with teacher.class_names / teacher.normalize taken from the uploaded model's record where the
    spec leaves them null, so the stored spec (what the worker runs) says what the teacher was fed."""
    teacher = spec.teacher
    if teacher.weights is None or (teacher.class_names is not None and teacher.normalize is not None):
        return spec
    try:
        record = repository.get_model(session, teacher.weights, scope)
    except repository.NotFound:
        return spec  # check_spec_against_server names the unknown model
    update = {field: getattr(record, field) for field in ("class_names", "normalize")
              if getattr(teacher, field) is None and getattr(record, field) is not None}
    if not update:
        return spec
    document = spec.model_dump(mode="json")
    document["teacher"].update(update)
    return JobSpec.model_validate(document)


def start_sweep(
    request: SweepRequest, *, session: Session, settings: Settings, celery: Celery, owner: str | None,
    scope: str | None, idempotency_key: str | None,
) -> tuple[Sweep, bool]:
    """(sweep, created): every child checked first (api.services.sweep_plans), then all committed, then sent.

    `owner` and `scope` as for `submit_job`. Only jobs queued now are sent (children that wait for the
    sweep's teacher job start later); a replay sends nothing again."""
    plan = plan_sweep(request, session=session, settings=settings, owner=scope)
    sweep, created, queued = create_sweep(session, plan, idempotency_key, owner=owner)
    for job_id in queued:
        try:
            enqueue_job(job_id, celery)
        except Exception:  # the rows are committed: the sweeper re-sends queued jobs nobody claimed
            log.exception("sweep %s: job %s committed but not enqueued; the sweeper will re-send it", sweep.id, job_id)
    return sweep, created
