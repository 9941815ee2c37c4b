"""Server-Sent Events for a sweep: one event per child state change, then the sweep's own status.

Polls the sweep's rows like api.events does for one job: a child event goes out when that
child's (status, stage) changed since the last poll; progress within a stage is left to the
child's own stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import anyio
from fastapi import Request
from fastapi.sse import ServerSentEvent
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.events import EventStreamConfig
from api.sweep_schemas import SweepJobOut, SweepSummary
from store.repository import NotFound
from store.sweeps import get_sweep

log = logging.getLogger(__name__)
_ENDED = {"succeeded", "failed", "cancelled"}


def _snapshot(sessions: sessionmaker[Session], sweep_id: str) -> tuple[SweepSummary, list[SweepJobOut]] | None:
    with sessions() as session:
        try:
            sweep = get_sweep(session, sweep_id)
        except NotFound:
            return None
        return SweepSummary.from_sweep(sweep), [SweepJobOut.from_job(job) for job in sweep.jobs]


async def sweep_events(
    request: Request, sessions: sessionmaker[Session], sweep_id: str, config: EventStreamConfig
) -> AsyncIterator[ServerSentEvent]:
    seen: dict[str, tuple[str, str | None]] = {}
    last_status: str | None = None
    sequence, last_sent = 0, time.monotonic()
    try:
        while not await request.is_disconnected():
            snapshot = await run_in_threadpool(_snapshot, sessions, sweep_id)
            if snapshot is None:
                return
            summary, jobs = snapshot
            for job in jobs:
                state = (job.status.value, job.stage)
                if seen.get(job.id) != state:
                    seen[job.id] = state
                    sequence += 1
                    yield ServerSentEvent(event="job", id=str(sequence), raw_data=job.model_dump_json(),
                                          retry=config.retry_ms if sequence == 1 else None)
                    last_sent = time.monotonic()
            if summary.status != last_status:
                last_status, sequence = summary.status, sequence + 1
                yield ServerSentEvent(event="sweep", id=str(sequence), raw_data=summary.model_dump_json())
                last_sent = time.monotonic()
            if summary.status in _ENDED:
                return
            if time.monotonic() - last_sent >= config.keepalive_s:
                yield ServerSentEvent(comment="keep-alive")
                last_sent = time.monotonic()
            await anyio.sleep(config.poll_interval_s)
    finally:
        log.info("sweep %s: event stream closed", sweep_id)
