"""The polls' version lookups on PostgreSQL without a thread: psycopg's async connections, owned by the event loop.

Profiled on PostgreSQL (bench/pg_poll_floor.py), a poll whose version is cached spent its
time not in the query but around it: the SELECT by primary key costs about 0.05 ms with the
bare driver, a thread-pool round trip alone 0.11 ms, SQLAlchemy's checkout and execution
context 0.16 ms more. The read must not block the event loop (it waits on a socket), so it
ran in the thread pool. Here it runs as driver SQL (`store.repository.PollStatements`, the
same statements SQLAlchemy runs, compiled once) on a few psycopg `AsyncConnection`s that the
event loop itself waits on: no thread, no pool checkout.

- Bounded: at most `size` connections, each running one statement at a time.
- Lazy: connections are opened on first use, in the loop that uses them; if the app is
  started again in another loop, the old loop's connections are dropped.
- A dropped connection (PostgreSQL restarted, an administrator terminated the backend) is
  noticed by its failing read, which is read again once on a fresh connection, so the client
  never sees the restart (as `store.db.read_with_retry` does for the SQLAlchemy reads).
- When the server is unreachable the driver's error is raised as SQLAlchemy's
  `OperationalError`, which the API answers 503 `database_unavailable`, like every other read.
- `aclose()` (the app's lifespan) closes them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from store.models import JobStatus
from store.repository import JobStamp, PollStatements

logger = logging.getLogger(__name__)

ASYNC_READ_CONNECTIONS = 4  # per API process: polls are one short statement each, so a few serve many clients
CONNECT_TIMEOUT_S = 5  # an unreachable server fails the poll (503) in this time, not the OS's minutes


def supports_async_reads(engine: Engine) -> bool:
    """Only for psycopg (3) on PostgreSQL: the driver whose async connection this module uses."""
    return engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"


class AsyncVersionLookup(PollStatements):
    """`PollStatements` run on a small set of psycopg async connections that the event loop owns."""

    def __init__(self, engine: Engine, size: int = ASYNC_READ_CONNECTIONS) -> None:
        super().__init__(engine.dialect)
        connect_args, connect_kwargs = engine.dialect.create_connect_args(engine.url)
        self._connect_args = list(connect_args)
        self._connect_kwargs = {"connect_timeout": CONNECT_TIMEOUT_S, **connect_kwargs, "autocommit": True}
        self.size = size
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self.opened = 0  # connections opened so far (tests check that a dropped one is replaced)

    def _bind_to_running_loop(self) -> asyncio.Semaphore:
        """The slots of the running loop; a new loop starts with none of the old loop's connections."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._slots is None:
            self._drop_idle()  # their loop is gone: nothing to await there, free the sockets
            self._loop, self._slots = loop, asyncio.Semaphore(self.size)
        return self._slots

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        connection = await psycopg.AsyncConnection.connect(*self._connect_args, **self._connect_kwargs)
        self.opened += 1
        return connection

    async def _fetch(self, sql: str, params: Any, rows: str) -> Any:
        """One statement on an idle connection (a new one when none is idle); once more on a fresh one
        if the reused connection turned out dead. `rows`: "one" or "all"."""
        async with self._bind_to_running_loop():
            if not self._idle:
                return await self._fetch_on_new(sql, params, rows)
            connection = self._idle.pop()
            try:
                result = await self._run(connection, sql, params, rows)
            except psycopg.OperationalError as exc:
                await connection.close()
                logger.warning("database connection lost (%s); reading again on a new one", type(exc).__name__)
                self._drop_idle()  # the server restarted: the other idle ones are dead too
                return await self._fetch_on_new(sql, params, rows)
            except BaseException:
                connection.pgconn.finish()  # cancelled or failed midway: its state is unknown (no await here)
                raise
            self._idle.append(connection)
            return result

    async def _fetch_on_new(self, sql: str, params: Any, rows: str) -> Any:
        """The statement on a connection opened for it, kept for later reads if it worked."""
        try:
            connection = await self._connect()
        except psycopg.OperationalError as exc:
            raise OperationalError(sql, None, exc) from exc
        try:
            result = await self._run(connection, sql, params, rows)
        except BaseException as exc:
            connection.pgconn.finish()
            if isinstance(exc, psycopg.OperationalError):
                raise OperationalError(sql, None, exc) from exc
            raise
        self._idle.append(connection)
        return result

    @staticmethod
    async def _run(connection: psycopg.AsyncConnection[Any], sql: str, params: Any, rows: str) -> Any:
        cursor = await connection.execute(sql, params)
        return await (cursor.fetchone() if rows == "one" else cursor.fetchall())

    def _drop_idle(self) -> None:
        stale, self._idle = self._idle, []
        for connection in stale:
            connection.pgconn.finish()

    async def version(self, job_id: str, owner: str | None = None) -> int:
        """The job's version; NotFound if absent or another owner's."""
        sql, params = self.version_query(job_id, owner)
        return self.version_from(await self._fetch(sql, params, "one"), job_id)

    async def page_stamps(self, status: JobStatus | None, limit: int, cursor: str | None,
                          owner: str | None = None) -> tuple[list[JobStamp], str | None] | None:
        """`list_job_stamps` of a first page, or None for a later page (see `first_page_query`)."""
        if cursor is not None:
            return None
        sql, params = self.first_page_query(status, limit, owner)
        return self.page_from(await self._fetch(sql, params, "all"), limit)

    async def aclose(self) -> None:
        """Close the idle connections (the app's lifespan; in-flight ones are closed by their reader)."""
        stale, self._idle = self._idle, []
        for connection in stale:
            await connection.close()
