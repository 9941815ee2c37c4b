"""Server-Sent Events for one job: poll the row, send what changed, stop when the job is over.

The job row carries a `version` bumped on every visible change, so polling it
is cheap and needs no pub/sub: every poll is one short session (no transaction
is held open while the stream idles), and an event goes out only when the
version moved - `state` when status or stage changed, `progress` otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from fastapi import Request
from fastapi.sse import ServerSentEvent
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.schemas import JobOut
from store.models import TERMINAL_STATUSES, JobStatus
from store.repository import NotFound, get_job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EventStreamConfig:
    poll_interval_s: float = 0.5
    keepalive_s: float = 15.0  # proxies drop idle connections; a comment line keeps them open
    retry_ms: int = 2000  # how long a browser EventSource waits before reconnecting


@dataclass(frozen=True)
class _Snapshot:
    version: int
    status: JobStatus
    stage: str | None
    job: JobOut


def _snapshot(sessions: sessionmaker[Session], job_id: str) -> _Snapshot | None:
    with sessions() as session:
        try:
            job = get_job(session, job_id)
        except NotFound:
            return None
        return _Snapshot(version=job.version or 0, status=JobStatus(job.status), stage=job.stage,
                         job=JobOut.from_job(job))


async def job_events(
    request: Request, sessions: sessionmaker[Session], job_id: str, config: EventStreamConfig
) -> AsyncIterator[ServerSentEvent]:
    last_version: int | None = None
    last_state: tuple[JobStatus, str | None] | None = None
    last_sent = time.monotonic()
    try:
        while not await request.is_disconnected():
            snapshot = await run_in_threadpool(_snapshot, sessions, job_id)
            if snapshot is None:
                log.info("job %s: gone while streaming events", job_id)
                return
            if snapshot.version != last_version:
                state = (snapshot.status, snapshot.stage)
                kind = "state" if state != last_state else "progress"
                yield ServerSentEvent(
                    event=kind,
                    id=str(snapshot.version),
                    raw_data=snapshot.job.model_dump_json(),
                    retry=config.retry_ms if last_version is None else None,
                )
                last_version, last_state, last_sent = snapshot.version, state, time.monotonic()
            if snapshot.status in TERMINAL_STATUSES:
                return
            if time.monotonic() - last_sent >= config.keepalive_s:
                yield ServerSentEvent(comment="keep-alive")
                last_sent = time.monotonic()
            await anyio.sleep(config.poll_interval_s)
    finally:
        # Reached on every exit: terminal state, vanished job, or the client going away (the server cancels us).
        log.info("job %s: event stream closed", job_id)
