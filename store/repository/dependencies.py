"""Dependencies between jobs: a sweep's children wait for its shared teacher job.

A child that trains its teacher starts `waiting` on the teacher job and is settled when that job ends:
queued with the teacher's weights, failed, or cancelled with it. Settling is idempotent (only
`waiting` rows move), so the finishing worker and the sweeper after a crash can both call it.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import TERMINAL_STATUSES, Job, JobStatus, ModelRecord, utcnow
from store.repository.states import load_job, transition

logger = logging.getLogger(__name__)


def teacher_model_id(teacher_job_id: str) -> str:
    """The model a teacher job's weights are registered as: derived from the job id, so registering twice
    (the worker, then the sweeper after a crash) finds the same row."""
    return "mdl_" + teacher_job_id.removeprefix("job_")


def _register_teacher(session: Session, teacher: Job) -> str | None:
    """The succeeded teacher job's weights as an uploaded-model row (children reference it by id)."""
    model_id = teacher_model_id(teacher.id)
    if session.get(ModelRecord, model_id) is not None:
        return model_id
    artifact = next((a for a in teacher.artifacts if a.name == "teacher.safetensors"), None)
    metrics = teacher.metrics or {}
    if artifact is None or not {"num_classes", "in_channels", "weights_sha256"} <= set(metrics):
        return None
    session.add(ModelRecord(
        id=model_id, name=teacher.name, arch=teacher.spec["teacher"]["arch"],
        num_classes=int(metrics["num_classes"]), in_channels=int(metrics["in_channels"]),
        relpath=artifact.relpath, size_bytes=artifact.size_bytes, sha256=str(metrics["weights_sha256"]),
        created_at=utcnow(), owner=teacher.owner,
    ))  # fmt: skip
    return model_id


def release_dependents(session: Session, job_id: str) -> list[str]:
    """Settle the jobs waiting for `job_id` once it has ended; returns the ids now queued (the caller
    enqueues them after this commits).

    Succeeded teacher -> its weights become a model row and every waiting child gets
    `teacher.weights = <model id>` and is queued. Failed or cancelled -> the children fail
    (`teacher_failed`) or are cancelled with it. Idempotent: only `waiting` rows move."""
    dependency = load_job(session, job_id)
    status = JobStatus(dependency.status)
    if status not in TERMINAL_STATUSES:
        session.commit()
        return []
    waiting = list(session.scalars(
        select(Job).where(Job.depends_on == job_id, Job.status == JobStatus.waiting.value)
    ))  # fmt: skip
    model_id = _register_teacher(session, dependency) if status is JobStatus.succeeded else None
    now, queued = utcnow(), []
    for child in waiting:
        if model_id is not None:
            spec = {**child.spec, "teacher": {**child.spec["teacher"], "weights": model_id}}
            if transition(session, child.id, JobStatus.waiting, JobStatus.queued, spec=spec):
                queued.append(child.id)
        elif status is JobStatus.cancelled:
            transition(session, child.id, JobStatus.waiting, JobStatus.cancelled, finished_at=now)
        else:
            reason = dependency.error_message or "its weights were not recorded"
            transition(
                session, child.id, JobStatus.waiting, JobStatus.failed, finished_at=now,
                error_code="teacher_failed", error_message=f"the shared teacher job {job_id} failed: {reason}",
                error_field="teacher", error_where="waiting",
            )  # fmt: skip
    session.commit()
    if waiting:
        logger.info("job %s: %s; settled %d waiting jobs (%d queued)", job_id, status.value, len(waiting), len(queued))
    return queued


def settle_waiting(session: Session, finished_before: datetime) -> list[str]:
    """Waiting jobs whose dependency ended before `finished_before` and still holds them (its worker
    died between finishing a teacher and releasing its children): release them now. Returns the
    ids to enqueue. The grace period leaves the finishing worker time to release them itself."""
    finished = [status.value for status in TERMINAL_STATUSES]
    ended = select(Job.id).where(Job.status.in_(finished), Job.finished_at < finished_before)
    dependencies = list(session.scalars(
        select(Job.depends_on).where(Job.status == JobStatus.waiting.value, Job.depends_on.in_(ended)).distinct()
    ))  # fmt: skip
    session.commit()
    queued: list[str] = []
    for dependency in dependencies:
        queued += release_dependents(session, dependency)
    return queued
