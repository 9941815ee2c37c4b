"""The polling routes' fast path (api.fastpath): same answers as the documented routes, and only for plain requests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from starlette.routing import Match

from api.app import create_app
from api.auth import ANONYMOUS
from api.documents import DocumentCache, JobView
from api.fastpath import FastRoute
from api.polls import read_job, read_page
from store.db import upgrade_database
from store.models import JobStatus
from store.settings import Settings
from tests.api.support import digits_spec
from tests.services import PostgresServer, postgres_server

_SAME_HEADERS = ("content-type", "etag", "cache-control", "content-length")


def _fast_route(client: TestClient, path: str) -> FastRoute:
    return next(route for route in client.app.routes  # type: ignore[attr-defined]
                if isinstance(route, FastRoute) and route.path == path)


def _scope(client: TestClient, path: str, query: bytes = b"", method: str = "GET",
           headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "query_string": query,
            "headers": headers or [], "state": {"caller": ANONYMOUS}, "app": client.app}


@pytest.mark.parametrize("path", ["/v1/jobs/{id}", "/v1/jobs/{id}?view=summary", "/v1/jobs?limit=20",
                                  "/v1/jobs?status=queued&view=summary&limit=1"])
def test_fast_and_documented_routes_answer_the_same_bytes_and_headers(client: TestClient, path: str) -> None:
    job_id = client.post("/v1/jobs", json=digits_spec()).json()["id"]
    client.post("/v1/jobs", json=digits_spec("second"))
    fast_path = path.replace("{id}", job_id)
    # An unknown query parameter is not "plain": the documented FastAPI route answers it (and ignores it).
    documented_path = fast_path + ("&" if "?" in fast_path else "?") + "unused=1"

    fast, documented = client.get(fast_path), client.get(documented_path)

    assert fast.status_code == documented.status_code == 200
    assert fast.content == documented.content
    assert {name: fast.headers.get(name) for name in _SAME_HEADERS} == \
        {name: documented.headers.get(name) for name in _SAME_HEADERS}
    etag = fast.headers["ETag"]
    assert client.get(fast_path, headers={"If-None-Match": etag}).status_code == 304
    assert client.get(documented_path, headers={"If-None-Match": etag}).status_code == 304


def test_plain_polls_match_the_fast_route_and_anything_else_falls_through(client: TestClient) -> None:
    job, page, health = (_fast_route(client, path) for path in ("/v1/jobs/{job_id}", "/v1/jobs", "/healthz"))

    assert job.matches(_scope(client, "/v1/jobs/job_abc"))[0] is Match.FULL
    assert job.matches(_scope(client, "/v1/jobs/job_abc", b"view=summary"))[0] is Match.FULL
    assert page.matches(_scope(client, "/v1/jobs", b"limit=100&status=running&cursor=abc"))[0] is Match.FULL
    assert health.matches(_scope(client, "/healthz"))[0] is Match.FULL
    for route, path, query in [
        (job, "/v1/jobs/bad.id", b""), (job, "/v1/jobs/" + "a" * 41, b""), (job, "/v1/jobs/job_abc", b"view=all"),
        (job, "/v1/jobs/job_abc", b"view=full&view=summary"), (page, "/v1/jobs", b"limit=0"),
        (page, "/v1/jobs", b"limit=101"), (page, "/v1/jobs", b"limit=1.5"), (page, "/v1/jobs", b"status=done"),
        (page, "/v1/jobs", b"cursor=" + b"c" * 501), (page, "/v1/jobs", b"cursor="), (page, "/v1/jobs", b"other=1"),
    ]:
        assert route.matches(_scope(client, path, query))[0] is Match.NONE, (path, query)
    assert health.matches(_scope(client, "/healthz", method="HEAD"))[0] is Match.NONE
    assert job.matches(_scope(client, "/v1/jobs/job_abc", method="DELETE"))[0] is Match.NONE
    too_long = [(b"if-none-match", b'"' + b"x" * 2000 + b'"')]
    assert job.matches(_scope(client, "/v1/jobs/job_abc", headers=too_long))[0] is Match.NONE
    no_caller = {**_scope(client, "/v1/jobs/job_abc"), "state": {}}
    assert job.matches(no_caller)[0] is Match.NONE


def test_requests_the_fast_path_leaves_alone_get_the_documented_errors(client: TestClient) -> None:
    limit = client.get("/v1/jobs?limit=0")
    bad_id = client.get("/v1/jobs/bad.id")
    view = client.get("/v1/jobs/job_abc?view=all")

    assert limit.status_code == bad_id.status_code == view.status_code == 422
    assert limit.json()["error"]["field"] == "limit"
    assert bad_id.json()["error"]["field"] == "job_id"
    assert view.json()["error"]["field"] == "view"
    assert client.get("/v1/jobs/job_missing").json()["error"]["code"] == "job_not_found"  # fast path: 404
    assert client.head("/healthz").status_code == 405  # as before: the documented route is GET only
    assert client.get("/healthz").json() == {"status": "ok"}


def test_with_api_keys_a_poll_needs_a_key_and_sees_only_its_own_jobs(make_client: Any) -> None:
    client = make_client(DISTILL_API_KEYS="alice-key,bob-key")
    alice, bob = ({"Authorization": f"Bearer {key}"} for key in ("alice-key", "bob-key"))
    job_id = client.post("/v1/jobs", json=digits_spec(), headers=alice).json()["id"]

    assert client.get(f"/v1/jobs/{job_id}").status_code == 401
    assert client.get(f"/v1/jobs/{job_id}", headers=alice).status_code == 200
    assert client.get(f"/v1/jobs/{job_id}", headers=bob).status_code == 404
    assert [job["id"] for job in client.get("/v1/jobs", headers=alice).json()["items"]] == [job_id]
    assert client.get("/v1/jobs", headers=bob).json()["items"] == []


@pytest.fixture
def postgres_client(postgres: PostgresServer, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    name = postgres.create_database(template=request.getfixturevalue("_postgres_template"))
    settings = Settings(DISTILL_HOME=tmp_path / "home", DATABASE_URL=postgres.url(name))  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        yield client
    postgres.drop_database(name)


def test_polls_survive_the_database_dropping_every_connection(postgres_client: TestClient) -> None:
    """The read engine does not ping before each poll: a dead pooled connection is noticed and read again."""
    client = postgres_client
    job_id = client.post("/v1/jobs", json=digits_spec()).json()["id"]
    for _ in range(3):  # the pool now holds connections of the read engine
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200
        assert client.get("/v1/jobs").status_code == 200
    engine = client.app.state.database.engine  # type: ignore[attr-defined]
    with engine.connect() as connection:
        killed = connection.exec_driver_sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()").scalar()
    assert killed >= 1
    lookup = client.app.state.async_versions  # type: ignore[attr-defined]
    opened = lookup.opened

    poll = client.get(f"/v1/jobs/{job_id}")
    assert poll.status_code == 200
    assert client.get("/v1/jobs").json()["items"][0]["id"] == job_id
    assert client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": poll.headers["ETag"]}).status_code == 304
    assert lookup.opened > opened  # the polls' async lookup replaced its dead connection, with no error


def _same_answer(async_answer: Any, pool_answer: Any) -> None:
    assert async_answer.status_code == pool_answer.status_code
    assert async_answer.content == pool_answer.body
    assert {name: async_answer.headers.get(name) for name in _SAME_HEADERS} == \
        {name: pool_answer.headers.get(name) for name in _SAME_HEADERS}


@pytest.mark.postgres
def test_postgres_polls_answer_on_the_async_lookup_what_the_thread_pool_path_answers(
        postgres_client: TestClient) -> None:
    """The async version lookup (store.async_reads) and the SQLAlchemy read it replaced give the same bytes."""
    client = postgres_client
    state = client.app.state  # type: ignore[attr-defined]
    job_ids = [client.post("/v1/jobs", json=digits_spec(f"job-{n}")).json()["id"] for n in range(3)]
    assert state.async_versions is not None and state.versions is None

    for view in JobView:
        for job_id in job_ids:
            state.documents = DocumentCache()  # both read the row: nothing from the other's cache
            async_answer = client.get(f"/v1/jobs/{job_id}?view={view.value}")
            state.documents = DocumentCache()
            _same_answer(async_answer, read_job(state, job_id=job_id, view=view, if_none_match=None, owner=None))
        for status, limit in ((None, 20), (None, 2), (JobStatus.queued, 1)):  # limit < 3: a next cursor too
            query = f"limit={limit}&view={view.value}" + (f"&status={status.value}" if status else "")
            state.documents = DocumentCache()
            async_answer = client.get(f"/v1/jobs?{query}")
            state.documents = DocumentCache()
            _same_answer(async_answer, read_page(state, status=status, limit=limit, cursor=None, view=view,
                                                 if_none_match=None, owner=None))
            etag = async_answer.headers["ETag"]
            assert client.get(f"/v1/jobs?{query}", headers={"If-None-Match": etag}).status_code == 304
    assert state.async_versions.opened >= 1


@pytest.mark.postgres
def test_postgres_polls_answer_503_while_the_database_is_down_then_200(tmp_path: Path) -> None:
    """An outage is a 503 with a code the client can branch on (never a 500); polls recover by themselves."""
    with postgres_server() as private:
        url = private.url(private.create_database(prefix="outage"))
        upgrade_database(url)
        settings = Settings(DISTILL_HOME=tmp_path / "home", DATABASE_URL=url)  # type: ignore[call-arg]
        with TestClient(create_app(settings)) as client:
            job_id = client.post("/v1/jobs", json=digits_spec()).json()["id"]
            assert client.get(f"/v1/jobs/{job_id}").status_code == 200
            with client.app.state.database.engine.connect() as connection:  # type: ignore[attr-defined]
                # The test server runs with synchronous_commit=off: without this an immediate stop may lose
                # the last commits (the schema, the job) still in WAL buffers.
                connection.execute(text("CHECKPOINT"))
            private.stop()
            try:
                down = [client.get(f"/v1/jobs/{job_id}"), client.get("/v1/jobs"), client.get(f"/v1/jobs/{job_id}")]
            finally:
                private.start()
            assert [answer.status_code for answer in down] == [503, 503, 503]
            assert {answer.json()["error"]["code"] for answer in down} == {"database_unavailable"}
            assert all(answer.headers.get("Retry-After") for answer in down)
            assert client.get(f"/v1/jobs/{job_id}").status_code == 200
            assert client.get("/v1/jobs").json()["items"][0]["id"] == job_id
