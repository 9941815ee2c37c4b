"""Sweep rows: create a sweep with its teacher and child jobs in one transaction, read, page, cancel.

A sweep has no status column: its state is read from its jobs (`sweep_status`), so it can never
disagree with them. Children that train their teacher start `waiting` on one shared teacher job
per (dataset, teacher) group and are queued by `repository.release_dependents` when it ends.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, selectinload

from core.spec.sweep import Child, teacher_groups
from store import repository
from store.models import TERMINAL_STATUSES, Job, JobKind, JobStatus, Sweep, utcnow
from store.repository.idempotency import KeyedRows, create_once
from store.repository.ownership import owned
from store.repository.paging import check_limit, cut_page, decode_cursor, newest_first

logger = logging.getLogger(__name__)


def new_sweep_id() -> str:
    return "swp_" + secrets.token_hex(8)


@dataclass
class SweepPlan:
    """What POST /v1/sweeps validated: the request as stored and the children it expands to."""

    name: str
    request: dict[str, Any]
    rank_by: str
    children: Sequence[Child]


def _job(sweep: Sweep, name: str, spec: dict[str, Any], status: JobStatus, now: datetime, **values: Any) -> Job:
    return Job(
        id=repository.new_job_id(), name=name[:200], status=status.value, spec=spec,
        request_digest=repository.request_digest(spec), attempts=0, version=0, created_at=now, updated_at=now,
        artifacts=[], sweep_id=sweep.id, owner=sweep.owner, **values,
    )  # fmt: skip


def _jobs_for(sweep: Sweep, plan: SweepPlan) -> list[Job]:
    """Teacher jobs first (queued), then the children (waiting on their teacher, or queued)."""
    now, jobs, teacher_of = utcnow(), [], {}
    for number, group in enumerate(teacher_groups(plan.children).values()):
        suffix = f"-{number}" if number else ""
        spec = {**group[0].spec, "name": f"{plan.name}-teacher{suffix}"[:200]}
        teacher = _job(sweep, spec["name"], spec, JobStatus.queued, now, kind=JobKind.teacher.value,
                       sweep_index=-1 - number)
        jobs.append(teacher)
        teacher_of.update({child.index: teacher.id for child in group})
    for child in plan.children:
        depends_on = teacher_of.get(child.index)
        jobs.append(_job(
            sweep, f"{plan.name}-{child.index}", child.spec,
            JobStatus.waiting if depends_on else JobStatus.queued, now,
            kind=JobKind.distill.value, sweep_index=child.index, overrides=child.overrides, depends_on=depends_on,
        ))  # fmt: skip
    return jobs


_SWEEPS_BY_KEY: KeyedRows[Sweep] = KeyedRows(
    lookup=select(Sweep).where(Sweep.idempotency_key == bindparam("key")),
    digest_of=lambda sweep: sweep.request_sha256,
    conflict="Idempotency-Key {key!r} was already used for sweep {id}",
)


def create_sweep(
    session: Session, plan: SweepPlan, idempotency_key: str | None, owner: str | None = None
) -> tuple[Sweep, bool, list[str]]:
    """Insert the sweep and all its jobs, owned by `owner`, in one commit; returns (sweep, created, job ids
    to enqueue now). Same key + same request -> (existing, False, []); same key + other request ->
    IdempotencyConflict. Keys are per owner, as for jobs."""
    digest = repository.request_digest(plan.request)
    key = repository.owned_idempotency_key(idempotency_key, owner)
    jobs: list[Job] = []

    def insert() -> Sweep:
        sweep = Sweep(id=new_sweep_id(), name=plan.name, request=plan.request, request_sha256=digest,
                      idempotency_key=key, rank_by=plan.rank_by, created_at=utcnow(), owner=owner)
        jobs.extend(_jobs_for(sweep, plan))
        session.add(sweep)
        session.flush()  # the sweep row first: its jobs reference it
        session.add_all(jobs)
        return sweep

    sweep, created = create_once(session, _SWEEPS_BY_KEY, key, digest, insert)
    if not created:
        return sweep, False, []
    queued = [job.id for job in jobs if job.status == JobStatus.queued.value]
    logger.info("sweep %s: created with %d jobs (%d queued now)", sweep.id, len(jobs), len(queued))
    return sweep, True, queued


def get_sweep(session: Session, sweep_id: str, owner: str | None = None) -> Sweep:
    """The sweep with its jobs (teachers first, then children in grid order); NotFound if absent or
    another key's."""
    sweep = session.scalars(
        select(Sweep).where(Sweep.id == sweep_id, owned(Sweep.owner, owner))
        .options(selectinload(Sweep.jobs).selectinload(Job.artifacts))
        .execution_options(populate_existing=True)
    ).one_or_none()  # fmt: skip
    session.commit()
    if sweep is None:
        raise repository.NotFound(f"sweep {sweep_id} not found")
    return sweep


def list_sweeps(
    session: Session, limit: int, cursor: str | None, owner: str | None = None
) -> tuple[list[Sweep], str | None]:
    """Newest first, keyset-paged like list_jobs, with the same cursor and the same checks of it (only
    `owner`'s unless None); ValueError for a malformed cursor or limit < 1."""
    check_limit(limit)
    after = decode_cursor(cursor) if cursor is not None else None
    statement = (
        select(Sweep).where(owned(Sweep.owner, owner))
        .options(selectinload(Sweep.jobs)).execution_options(populate_existing=True)
    )  # fmt: skip
    rows = list(session.scalars(newest_first(statement, Sweep.created_at, Sweep.id, after).limit(limit + 1)))
    session.commit()
    return cut_page(rows, limit, lambda sweep: (sweep.created_at, sweep.id))


def cancel_sweep(session: Session, sweep_id: str, owner: str | None = None) -> Sweep:
    """Every unfinished job of the sweep (teachers included) is cancelled through the state machine."""
    sweep = get_sweep(session, sweep_id, owner)
    for job in sweep.jobs:
        if JobStatus(job.status) not in TERMINAL_STATUSES:
            try:
                repository.request_cancel(session, job.id)
            except repository.IllegalTransition:  # it finished meanwhile
                pass
    logger.info("sweep %s: cancel requested", sweep_id)
    return get_sweep(session, sweep_id, owner)


def sweep_status(jobs: Sequence[Job]) -> str:
    """queued until a job starts, running until all ended, then failed > cancelled > succeeded."""
    statuses = {JobStatus(job.status) for job in jobs}
    unfinished = statuses - TERMINAL_STATUSES
    if unfinished:
        started = statuses & {JobStatus.running, JobStatus.cancelling, *TERMINAL_STATUSES}
        return "running" if started else "queued"
    for status in (JobStatus.failed, JobStatus.cancelled):
        if status in statuses:
            return status.value
    return JobStatus.succeeded.value


def request_document(base: dict[str, Any], grid: dict[str, Any], rank_by: str) -> dict[str, Any]:
    return json.loads(json.dumps({"base": base, "grid": grid, "rank_by": rank_by}))
