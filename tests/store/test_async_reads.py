"""PostgreSQL's async poll lookups (store.async_reads): the same answers as SQLAlchemy's reads, bounded,
and a connection the server dropped replaced without an error."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from store import repository
from store.async_reads import AsyncVersionLookup, supports_async_reads
from store.db import Database
from store.models import JobStatus
from tests.services import PostgresServer

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_database(postgres: PostgresServer, request: pytest.FixtureRequest) -> Iterator[Database]:
    name = postgres.create_database(template=request.getfixturevalue("_postgres_template"))
    database = Database(postgres.url(name))
    yield database
    database.dispose()
    postgres.drop_database(name)


def _version(database: Database, job_id: str) -> int:
    with database.reader.connect() as connection:
        return repository.job_stamp(connection, job_id).version


def _jobs(database: Database) -> list[str]:
    """Three queued jobs (the second alice's), then the first claimed (running, version moved)."""
    with database.session() as session:
        ids = [repository.create_job(session, {"n": n}, f"job-{n}", owner="alice" if n == 1 else None)[0].id
               for n in range(3)]
        repository.claim_job(session, ids[0], "worker-1", 3)
    return ids


def test_async_lookups_answer_what_the_sqlalchemy_reads_answer(pg_database: Database) -> None:
    ids = _jobs(pg_database)
    lookup = AsyncVersionLookup(pg_database.reader)
    assert supports_async_reads(pg_database.reader)

    async def compare() -> None:
        with pg_database.reader.connect() as connection:
            for job_id in ids:
                for owner in (None, "alice"):
                    try:
                        expected = repository.job_stamp(connection, job_id, owner).version
                    except repository.NotFound:
                        with pytest.raises(repository.NotFound):
                            await lookup.version(job_id, owner)
                        continue
                    assert await lookup.version(job_id, owner) == expected
            for status in (None, JobStatus.queued, JobStatus.running, JobStatus.succeeded):
                for owner in (None, "alice"):
                    for limit in (1, 2, 20):
                        expected_page = repository.list_job_stamps(connection, status, limit, None, owner)
                        assert await lookup.page_stamps(status, limit, None, owner) == expected_page
        with pytest.raises(repository.NotFound):
            await lookup.version("job_missing")
        assert await lookup.page_stamps(None, 1, "a-cursor") is None  # later pages: SQLAlchemy's path
        await lookup.aclose()

    asyncio.run(compare())
    assert 1 <= lookup.opened <= lookup.size


def test_a_terminated_backend_is_replaced_and_connections_stay_bounded(pg_database: Database) -> None:
    job_id = _jobs(pg_database)[2]
    version = _version(pg_database, job_id)
    lookup = AsyncVersionLookup(pg_database.reader, size=3)

    async def poll_while_backends_die() -> None:
        versions = await asyncio.gather(*(lookup.version(job_id) for _ in range(40)))
        assert set(versions) == {version} and lookup.opened <= 3  # 40 at once, never more than `size` connections
        with pg_database.engine.connect() as connection:
            killed = connection.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
        assert killed >= 1
        opened_before = lookup.opened
        assert await lookup.version(job_id) == version  # no error: read again on a fresh connection
        assert (await lookup.page_stamps(None, 2, None))[0][0].id == job_id
        assert lookup.opened > opened_before
        await lookup.aclose()

    asyncio.run(poll_while_backends_die())


def test_a_new_event_loop_gets_connections_of_its_own(pg_database: Database) -> None:
    """An app started again (TestClient, a restarted lifespan) runs in another loop: old connections are dropped."""
    job_id = _jobs(pg_database)[2]
    version = _version(pg_database, job_id)
    lookup = AsyncVersionLookup(pg_database.reader)

    assert asyncio.run(lookup.version(job_id)) == version
    assert asyncio.run(lookup.version(job_id)) == version
    assert lookup.opened == 2
    asyncio.run(lookup.aclose())
