"""Where a PostgreSQL poll's time goes: its floor pieces timed one by one, then a profile of the poll.

    python bench/pg_poll_floor.py                 # pieces + cProfile of in-process GET job calls
    python bench/pg_poll_floor.py --rounds 3000 --profile-calls 2000

`bench/service_speed.py` showed a poll of a job on PostgreSQL costing about 1.1 ms more than
/healthz, against 0.06 ms on SQLite. This script times, in one process, on one throwaway
PostgreSQL server on loopback (tests/services.py), the pieces such a poll could be made of:
a bare psycopg SELECT of one job's version by primary key (sync and async), a thread-pool
round trip with no work in it, the same SELECT behind that hop, SQLAlchemy's checkout +
execute of the same statement (the read engine, `read_with_retry`), and in-process ASGI
calls of the app (no HTTP server, no client): GET /healthz, GET /v1/jobs/{id}, GET
/v1/jobs?limit=20. Then cProfile of the GET job calls, to show what is left. Medians of
`--rounds` calls each; it is a diagnosis aid, not a before/after table (service_speed is).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402

from api.app import create_app  # noqa: E402
from store import repository  # noqa: E402
from store.async_reads import AsyncVersionLookup  # noqa: E402
from store.db import Database, read_with_retry, upgrade_database  # noqa: E402
from store.repository import PollStatements  # noqa: E402
from store.settings import Settings  # noqa: E402
from tests.api.support import digits_spec  # noqa: E402
from tests.services import postgres_server  # noqa: E402

VERSION_SQL = "SELECT jobs.version FROM jobs WHERE jobs.id = %s"


async def median_us(call: Callable[[], Awaitable[Any]], rounds: int) -> float:
    """Median wall time of one awaited call, in microseconds (after a short warm-up)."""
    for _ in range(min(50, rounds)):
        await call()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


async def asgi_get(app: Any, path: str) -> int:
    """One GET through the whole app (middlewares, router, route) with no server and no client."""
    raw_path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": raw_path, "raw_path": raw_path.encode(), "root_path": "", "query_string": query.encode(),
             "headers": [(b"host", b"bench")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def driver_pieces(url: str, job_id: str, rounds: int) -> dict[str, float]:
    """The floor pieces below the app: the driver alone, the thread hop alone, SQLAlchemy's read."""
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    database = Database(url)
    lookup = AsyncVersionLookup(database.reader)
    sync = psycopg.connect(dsn, autocommit=True)
    aconn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)

    def sync_select() -> Any:
        return sync.execute(VERSION_SQL, (job_id,)).fetchone()

    async def async_select() -> Any:
        cursor = await aconn.execute(VERSION_SQL, (job_id,))
        return await cursor.fetchone()

    async def direct() -> Any:
        return sync_select()

    page_sql, page_params = PollStatements(database.reader.dialect).first_page_query(None, 20, None)

    async def page_direct() -> Any:
        return sync.execute(page_sql, page_params).fetchall()


    def sqlalchemy_read() -> int:
        return read_with_retry(database.reader, lambda connection: repository.job_stamp(connection, job_id).version)

    async def sqlalchemy_inline() -> Any:
        return sqlalchemy_read()

    pieces = {
        "psycopg sync SELECT version by id (on the loop's thread)": await median_us(direct, rounds),
        "psycopg sync SELECT of a first page's 21 stamps (on the loop's thread)": await median_us(
            page_direct, rounds),
        "psycopg async SELECT version by id (AsyncConnection)": await median_us(async_select, rounds),
        "store.async_reads AsyncVersionLookup.version (what a PostgreSQL poll runs now)": await median_us(
            lambda: lookup.version(job_id), rounds),
        "thread-pool round trip, no work (run_in_threadpool)": await median_us(
            lambda: run_in_threadpool(lambda: None), rounds),
        "psycopg sync SELECT in the thread pool": await median_us(lambda: run_in_threadpool(sync_select), rounds),
        "SQLAlchemy checkout + execute (read engine, read_with_retry), inline": await median_us(
            sqlalchemy_inline, rounds),
        "SQLAlchemy checkout + execute, in the thread pool": await median_us(
            lambda: run_in_threadpool(sqlalchemy_read), rounds),
    }
    sync.close()
    await aconn.close()
    await lookup.aclose()
    database.dispose()
    return pieces


async def app_pieces(app: Any, job_id: str, rounds: int) -> dict[str, float]:
    """In-process ASGI calls of the real app: the same requests as service_speed's one-client rows."""
    return {f"ASGI GET {path}": await median_us(lambda path=path: asgi_get(app, path), rounds)
            for path in ("/healthz", f"/v1/jobs/{job_id}", "/v1/jobs?limit=20")}


async def profile_polls(app: Any, path: str, calls: int) -> str:
    """cProfile of `calls` GETs of `path`: the top of the cumulative and own-time lists."""
    for _ in range(50):
        await asgi_get(app, path)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        await asgi_get(app, path)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(30)
    stats.sort_stats("tottime").print_stats(20)
    return out.getvalue()


def seeded_app(url: str, home: Path, jobs: int) -> tuple[Any, str]:
    """The app on `url` with `jobs` jobs submitted through the API (as the bench's servers hold them)."""
    upgrade_database(url)
    app = create_app(Settings(DISTILL_HOME=home, DATABASE_URL=url))  # type: ignore[call-arg]
    with TestClient(app) as client:
        ids = [client.post("/v1/jobs", json=digits_spec(f"seed-{n}")).json()["id"] for n in range(jobs)]
    return app, ids[0]


async def run(url: str, app: Any, job_id: str, args: argparse.Namespace) -> None:
    pieces = await driver_pieces(url, job_id, args.rounds)
    async with app.router.lifespan_context(app):
        pieces.update(await app_pieces(app, job_id, args.rounds))
        print("| piece (PostgreSQL on loopback) | median us |\n|---|---|")
        for name, micros in pieces.items():
            print(f"| {name} | {micros:.0f} |")
        if args.profile_calls:
            path = "/v1/jobs?limit=20" if args.profile == "list" else f"/v1/jobs/{job_id}"
            print(f"cProfile of {args.profile_calls} x GET {path}")
            print(await profile_polls(app, path, args.profile_calls))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2000, help="timed calls per piece")
    parser.add_argument("--profile-calls", type=int, default=2000, help="profiled GET job calls (0: none)")
    parser.add_argument("--profile", choices=["job", "list"], default="job", help="which poll to profile")
    parser.add_argument("--seed-jobs", type=int, default=50)
    args = parser.parse_args()
    with postgres_server() as postgres, tempfile.TemporaryDirectory() as home:
        url = postgres.url(postgres.create_database(prefix="floor"))
        app, job_id = seeded_app(url, Path(home), args.seed_jobs)
        asyncio.run(run(url, app, job_id, args))


if __name__ == "__main__":
    main()
