"""`distill serve` on the embedded defaults (SQLite, filesystem broker, no servers), driven like the README."""

from __future__ import annotations

import os
import signal
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from store import repository
from store.db import Database
from tests.e2e.checks import assert_downloads_reproduce_metrics, assert_event_stream_of_a_successful_job
from tests.e2e.conftest import (
    DISTILL,
    FAST_ENV,
    START_TIMEOUT_S,
    TERMINAL,
    EventCollector,
    Process,
    clean_env,
    present_worker_pids,
    spawn,
    wait_until,
)
from tests.services import free_port
from tests.worker.jobspecs import tiny_spec

pytestmark = pytest.mark.slow


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def _start_serve(tmp_path: Path, home: Path) -> tuple[Process, httpx.Client]:
    """`distill serve` on embedded defaults and a free port, returned once /readyz says ready."""
    port = free_port()
    serve = spawn("serve", [DISTILL, "serve", "--port", str(port)], clean_env(DISTILL_HOME=str(home), **FAST_ENV),
                  tmp_path / "logs")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        wait_until(lambda: serve.alive() and _ready(client), START_TIMEOUT_S, f"/readyz\n{serve.log()}", 0.5)
    except BaseException:
        client.close()
        serve.stop(signal.SIGTERM, timeout_s=60)
        raise
    return serve, client


def test_distill_serve_runs_a_job_end_to_end_and_stops_its_workers_on_ctrl_c(tmp_path: Path) -> None:
    home = tmp_path / "home"
    serve, client = _start_serve(tmp_path, home)
    try:
        ready = client.get("/readyz").json()
        checks = ready["checks"]
        assert checks["worker"]["ok"] and checks["database"]["ok"] and checks["broker"]["ok"]
        # each worker process says what it computes on (this host has no CUDA device)
        assert ready["workers"] and all(worker["device"]["type"] == "cpu" for worker in ready["workers"])
        assert (home / "distill.db").is_file() and (home / "broker").is_dir()  # SQLite + filesystem broker

        response = client.post("/v1/jobs", json=tiny_spec(student_epochs=2))
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        with httpx.Client(base_url=client.base_url) as stream_client:
            collector = EventCollector(stream_client, job_id)
            collector.start()
            final = wait_until(
                lambda: (job := client.get(f"/v1/jobs/{job_id}").json())["status"] in TERMINAL and job,
                180, f"job {job_id} to finish\n{serve.log()}", 0.2,
            )  # fmt: skip
            events = collector.result()
        assert final["status"] == "succeeded", f"{final}\n{serve.log()}"
        assert_event_stream_of_a_successful_job(events)
        assert_downloads_reproduce_metrics(client, final, tmp_path / "download")

        present = present_worker_pids(f"sqlite:///{home / 'distill.db'}")
        assert len(present) == 1
        worker_pid = present.pop()
    finally:
        client.close()
        returncode = serve.stop(signal.SIGINT, timeout_s=60)  # what Ctrl-C sends

    assert returncode == 0, serve.log()
    database = Database(f"sqlite:///{home / 'distill.db'}")
    with database.sessions() as session:
        assert repository.live_workers(session, seen_after=datetime(2000, 1, 1, tzinfo=timezone.utc)) == []
    database.dispose()
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)



def test_sigterm_to_distill_serve_stops_its_workers_too(tmp_path: Path) -> None:
    """`docker stop` / systemd send SIGTERM: the workers must not outlive the server (they would
    keep consuming the queue, e.g. another stack's Redis messages)."""
    home = tmp_path / "home"
    serve, client = _start_serve(tmp_path, home)
    try:
        (worker_pid,) = present_worker_pids(f"sqlite:///{home / 'distill.db'}")
    finally:
        client.close()
        returncode = serve.stop(signal.SIGTERM, timeout_s=60)

    assert returncode == 0, serve.log()
    assert "workers stopped" in serve.log()
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)
