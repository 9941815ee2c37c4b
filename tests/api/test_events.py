"""Server-Sent Events: one event per visible change, `state` vs `progress`, and the stream ends with the job."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

from fastapi.testclient import TestClient

from store import repository
from store.db import Database
from store.models import JobStatus
from store.repository import polls
from tests.api.support import digits_spec


def _read_events(client: TestClient, url: str) -> list[dict]:
    """Every event until the server closes the stream: [{"event", "id", "data"} | {"comment"}]."""
    events: list[dict] = []
    current: dict = {}
    with client.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line == "":
                if current:
                    events.append(current)
                current = {}
            elif line.startswith(":"):
                current["comment"] = line[1:].strip()
            else:
                key, _, value = line.partition(": ")
                current[key] = json.loads(value) if key == "data" else value
    if current:
        events.append(current)
    return events


def test_stream_of_a_finished_job_sends_its_state_once_and_closes(client: TestClient, db: Database) -> None:
    job_id = client.post("/v1/jobs", json=digits_spec()).json()["id"]
    with db.session() as session:
        repository.claim_job(session, job_id, "worker-1", max_attempts=3)
        repository.finish_job(session, job_id, "worker-1", JobStatus.succeeded, metrics={"student_accuracy": 0.9})

    events = _read_events(client, f"/v1/jobs/{job_id}/events")

    assert [event["event"] for event in events] == ["state"]
    assert events[0]["data"]["status"] == "succeeded"
    assert events[0]["data"]["metrics"] == {"student_accuracy": 0.9}


def test_stream_follows_a_job_through_state_and_progress_changes_until_it_ends(
    client: TestClient, db: Database
) -> None:
    job_id = client.post("/v1/jobs", json=digits_spec()).json()["id"]

    def worker() -> None:
        # Each step waits several poll intervals, so the stream sees every version.
        steps = [
            lambda s: repository.claim_job(s, job_id, "worker-1", max_attempts=3),
            lambda s: repository.heartbeat(s, job_id, "worker-1", progress={"epoch": 1, "fraction": 0.3}),
            lambda s: repository.heartbeat(s, job_id, "worker-1", stage="evaluating"),
            lambda s: repository.finish_job(s, job_id, "worker-1", JobStatus.succeeded),
        ]
        for step in steps:
            time.sleep(0.4)
            with db.session() as session:
                step(session)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        events = _read_events(client, f"/v1/jobs/{job_id}/events")
    finally:
        thread.join()

    sent = [(event["event"], event["data"]["status"], event["data"]["stage"]) for event in events]
    assert sent == [
        ("state", "queued", None),
        ("state", "running", "preparing_data"),
        ("progress", "running", "preparing_data"),
        ("state", "running", "evaluating"),
        ("state", "succeeded", None),
    ]
    assert events[2]["data"]["progress"]["fraction"] == 0.3
    versions = [int(event["id"]) for event in events]
    assert versions == sorted(set(versions))


def test_idle_stream_sends_keep_alive_comments(client: TestClient) -> None:
    client.app.state.event_stream = replace(client.app.state.event_stream, keepalive_s=0.1)  # type: ignore
    job_id = client.post("/v1/jobs", json=digits_spec()).json()["id"]
    # Keep-alives start after the first state event, whose read can take a second on a loaded machine
    cancel = threading.Timer(3.0, lambda: client.post(f"/v1/jobs/{job_id}/cancel"))
    cancel.start()
    try:
        events = _read_events(client, f"/v1/jobs/{job_id}/events")
    finally:
        cancel.join()

    assert events[0]["event"] == "state" and events[-1]["data"]["status"] == "cancelled"
    assert any(event.get("comment") == "keep-alive" for event in events[1:-1])


def test_client_that_disconnects_ends_the_stream(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=digits_spec()).json()["id"]  # stays queued: the stream would go on

    started = time.monotonic()
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        first = next(response.iter_lines())
    elapsed_s = time.monotonic() - started

    assert first == "event: state"
    assert elapsed_s < 5


def test_stream_of_an_unknown_job_is_a_404_json_error(client: TestClient) -> None:
    response = client.get("/v1/jobs/job_missing/events")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"


class _ConnectedClient:
    """The one thing job_events asks of its request: whether the client is still there."""

    async def is_disconnected(self) -> bool:
        return False


def test_fifty_streams_on_one_job_share_one_poller_one_query_per_tick_and_one_read_per_change(
    client: TestClient, db: Database
) -> None:
    import asyncio

    from sqlalchemy import event

    from api.events import EventHub, job_events

    job_id = client.post("/v1/jobs", json=digits_spec()).json()["id"]
    hub: EventHub = client.app.state.event_hub  # type: ignore[attr-defined]
    statements: list[str] = []
    full_read = str(polls._FULL_BY_ID.compile(dialect=db.reader.dialect))
    stamp_read = str(polls._STAMP_BY_ID.compile(dialect=db.reader.dialect))

    def count(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        # The poller's own two statements (on SQLite the writes above share the engine).
        if statement == full_read:
            statements.append("row")
        elif statement == stamp_read:
            statements.append("stamp")

    def move(stage: str | None, status: JobStatus | None = None) -> None:
        with db.session() as session:
            if status is None:
                repository.heartbeat(session, job_id, "worker-1", stage=stage, progress={"epoch": 1})
            else:
                repository.finish_job(session, job_id, "worker-1", status, metrics={"student_accuracy": 0.9})

    async def follow() -> list[str]:
        return [sent.event async for sent in job_events(_ConnectedClient(), hub, job_id)]  # type: ignore[arg-type]

    async def scenario() -> list[list[str]]:
        streams = [asyncio.create_task(follow()) for _ in range(50)]
        await asyncio.sleep(0.3)
        assert len(hub.feeds) == 1 and hub.feeds[job_id].subscribers == 50
        with db.session() as session:
            repository.claim_job(session, job_id, "worker-1", max_attempts=3)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(move, "distilling")
        await asyncio.sleep(0.3)
        await asyncio.to_thread(move, None, JobStatus.succeeded)
        return await asyncio.wait_for(asyncio.gather(*streams), timeout=30)

    event.listen(db.reader, "before_cursor_execute", count)
    try:
        started = asyncio.get_event_loop_policy().new_event_loop()
        try:
            results = started.run_until_complete(scenario())
        finally:
            started.close()
    finally:
        event.remove(db.reader, "before_cursor_execute", count)

    # Every stream saw the job's whole life: queued, running, distilling, succeeded.
    for kinds in results:
        assert kinds[0] == "state" and kinds[-1] == "state" and len(kinds) == 4
    # One full read per version the poller saw (4), not per stream (200); one stamp per poll tick (~1.2 s / 0.05 s).
    assert statements.count("row") == 4
    assert statements.count("stamp") < 60
    assert hub.feeds == {}  # the poller went away with its job
