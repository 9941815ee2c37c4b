"""Server-Sent Events for jobs: one poller per job, fanned out to every stream that follows it.

The job row carries a `version` bumped on every visible change. For each job
that has at least one open stream, the process runs one poller task: every
`poll_interval_s` it reads that version (one indexed lookup, no transaction),
and only when it moved does it read the job and encode its JSON, once, for all
subscribers. Fifty dashboards following one job therefore cost the database one
small lookup per tick and one read per change, not fifty of each. The poller
stops with its last subscriber, or when the job reaches a terminal state.

Each stream sends `state` when status or stage changed since what *it* last
sent, `progress` otherwise, and a keep-alive comment when idle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from fastapi import Request
from fastapi.sse import ServerSentEvent
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from api.documents import encode, job_document
from store.models import TERMINAL_STATUSES, JobStatus
from store.repository import NotFound, job_stamp, read_artifact_rows, read_job_row

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EventStreamConfig:
    poll_interval_s: float = 0.5
    keepalive_s: float = 15.0  # proxies drop idle connections; a comment line keeps them open
    retry_ms: int = 2000  # how long a browser EventSource waits before reconnecting


@dataclass(frozen=True)
class Snapshot:
    """One version of a job, already encoded: every subscriber sends the same bytes."""

    version: int
    status: JobStatus
    stage: str | None
    data: str


@dataclass
class JobFeed:
    """The latest snapshot of one job and a way to wait for the next one."""

    job_id: str
    snapshot: Snapshot | None = None
    ended: bool = False  # terminal state reached or the job vanished: no snapshot will follow
    subscribers: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def publish(self, snapshot: Snapshot | None, ended: bool) -> None:
        if snapshot is not None:
            self.snapshot = snapshot
        self.ended = ended
        wakeup, self.changed = self.changed, asyncio.Event()
        wakeup.set()


def read_stamp(reader: Engine, job_id: str) -> int | None:
    """The job's version, or None when it no longer exists."""
    with reader.connect() as connection:
        try:
            return job_stamp(connection, job_id).version
        except NotFound:
            return None


def read_snapshot(reader: Engine, job_id: str) -> Snapshot | None:
    with reader.connect() as connection:
        try:
            row = read_job_row(connection, job_id)
        except NotFound:
            return None
        artifacts = read_artifact_rows(connection, job_id)
    return Snapshot(version=row.version or 0, status=JobStatus(row.status), stage=row.stage,
                    data=encode(job_document(row, artifacts=artifacts)).decode())


class EventHub:
    """The pollers of one process, by job id (each API process has its own; they share nothing)."""

    def __init__(self, reader: Engine, config: Callable[[], EventStreamConfig]) -> None:
        self.reader = reader
        self._config = config  # looked up on use: tests and operators may swap the app's config at run time
        self.feeds: dict[str, JobFeed] = {}

    @property
    def config(self) -> EventStreamConfig:
        return self._config()

    @asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[JobFeed]:
        feed = self.feeds.get(job_id)
        if feed is None or feed.task is None or feed.task.done():
            feed = self.feeds[job_id] = JobFeed(job_id)
            feed.task = asyncio.create_task(self._poll(feed), name=f"events-{job_id}")
        feed.subscribers += 1
        try:
            yield feed
        finally:
            feed.subscribers -= 1
            if feed.subscribers == 0 and self.feeds.get(job_id) is feed:
                del self.feeds[job_id]
                if feed.task is not None:
                    feed.task.cancel()

    async def _poll(self, feed: JobFeed) -> None:
        last_version: int | None = None
        try:
            while True:
                version = await run_in_threadpool(read_stamp, self.reader, feed.job_id)
                snapshot = None
                if version is not None and version != last_version:
                    snapshot = await run_in_threadpool(read_snapshot, self.reader, feed.job_id)
                if version is None or (snapshot is None and version != last_version):
                    log.info("job %s: gone while streaming events", feed.job_id)
                    feed.publish(None, ended=True)
                    return
                if snapshot is not None:
                    last_version = snapshot.version
                    feed.publish(snapshot, ended=snapshot.status in TERMINAL_STATUSES)
                    if feed.ended:
                        return
                await anyio.sleep(self.config.poll_interval_s)
        except Exception:
            log.exception("job %s: event poller failed; closing its streams", feed.job_id)
            feed.publish(None, ended=True)


def _event(snapshot: Snapshot, kind: str, first: bool, config: EventStreamConfig) -> ServerSentEvent:
    return ServerSentEvent(event=kind, id=str(snapshot.version), raw_data=snapshot.data,
                           retry=config.retry_ms if first else None)


async def job_events(request: Request, hub: EventHub, job_id: str) -> AsyncIterator[ServerSentEvent]:
    config = hub.config
    last_version: int | None = None
    last_state: tuple[JobStatus, str | None] | None = None
    last_sent = time.monotonic()
    try:
        async with hub.subscribe(job_id) as feed:
            while not await request.is_disconnected():
                snapshot, ended, wakeup = feed.snapshot, feed.ended, feed.changed
                if snapshot is not None and snapshot.version != last_version:
                    state = (snapshot.status, snapshot.stage)
                    yield _event(snapshot, "state" if state != last_state else "progress", last_version is None, config)
                    last_version, last_state, last_sent = snapshot.version, state, time.monotonic()
                if ended:
                    return
                # Only once the first state is out: every stream starts with the job's state, even when the
                # hub's first read of a new job is slower than the keep-alive period.
                if last_version is not None and time.monotonic() - last_sent >= config.keepalive_s:
                    yield ServerSentEvent(comment="keep-alive")
                    last_sent = time.monotonic()
                # Wake on a new snapshot; otherwise look again after a poll interval (keep-alive, disconnects).
                with anyio.move_on_after(config.poll_interval_s):
                    await wakeup.wait()
    finally:
        # Reached on every exit: terminal state, vanished job, or the client going away (the server cancels us).
        log.info("job %s: event stream closed", job_id)
