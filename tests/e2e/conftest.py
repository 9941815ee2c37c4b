"""End-to-end stacks of real processes: `distill api` and Celery workers talking through a real broker.

Nothing runs in-process except the test's HTTP client and direct reads of the
database; every stack gets its own DISTILL_HOME, database and Redis database
number, so leftover messages of one test never reach another's worker.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from store import repository
from store.db import Database, upgrade_database
from store.models import Job, JobStatus, TERMINAL_STATUSES, WorkerRecord
from store.settings import Settings
from tests.services import free_port

TERMINAL = {status.value for status in TERMINAL_STATUSES}
START_TIMEOUT_S = 180  # a process importing torch on a loaded 2-core box can take over a minute
# The values the brief fixes for end-to-end runs: fast heartbeats, quick stale detection, one thread.
FAST_ENV = {
    "DISTILL_HEARTBEAT_S": "0.5",
    "DISTILL_STALE_AFTER_S": "3",
    "DISTILL_TORCH_THREADS": "1",
    "DISTILL_PROGRESS_INTERVAL_S": "0.2",
    "DISTILL_LOG_LEVEL": "INFO",
}
_redis_db_numbers = itertools.count(1)
DISTILL = str(Path(sys.executable).with_name("distill"))  # the installed console script


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any distill setting, plus `extra`."""
    names = set(Settings.model_fields) | {f.alias for f in Settings.model_fields.values() if f.alias}
    env = {key: value for key, value in os.environ.items() if key not in names and key.upper() not in names}
    return {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@dataclass
class Process:
    """A child process whose output goes to a log file the test can read."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.alive():
            self.popen.send_signal(sig)
        return self.wait(timeout_s)

    def wait(self, timeout_s: float = 30) -> int:
        """Wait for the exit; kill the process if it overstays."""
        if self.alive():
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def spawn(name: str, command: list[str], env: dict[str, str], logs: Path) -> Process:
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    with open(log_path, "ab") as handle:
        popen = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    return Process(name, popen, log_path)


def present_worker_pids(database_url: str) -> set[int]:
    """Pids of this host's workers that have a presence row (written by worker.presence every tick)."""
    database = Database(database_url)
    try:
        with database.sessions() as session:
            workers = repository.live_workers(session, seen_after=datetime(2000, 1, 1, tzinfo=timezone.utc))
    finally:
        database.dispose()
    return {worker.pid for worker in workers if worker.hostname == socket.gethostname()}


def running_worker_pids(database_url: str) -> set[int]:
    """Pids of this host's workers that hold a running job (a job's worker_id is its worker's presence id)."""
    database = Database(database_url)
    try:
        with database.sessions() as session:
            pids = session.scalars(
                select(WorkerRecord.pid)
                .join(Job, Job.worker_id == WorkerRecord.id)
                .where(Job.status == JobStatus.running.value, WorkerRecord.hostname == socket.gethostname())
            ).all()
    finally:
        database.dispose()
    return set(pids)


def read_events(client: httpx.Client, job_id: str, timeout_s: float = 120) -> list[tuple[str, dict[str, Any]]]:
    """The job's Server-Sent Events as (event, job document) pairs, until the server ends the stream."""
    events: list[tuple[str, dict[str, Any]]] = []
    name, data = "message", []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(timeout_s)) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line[len("event:"):].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:"):].strip())
            elif line == "":
                if data:
                    events.append((name, json.loads("\n".join(data))))
                name, data = "message", []
    return events


class EventCollector(threading.Thread):
    """Reads a job's event stream in the background while the test polls."""

    def __init__(self, client: httpx.Client, job_id: str) -> None:
        super().__init__(daemon=True)
        self.client, self.job_id = client, job_id
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.events = read_events(self.client, self.job_id)
        except BaseException as exc:  # noqa: BLE001 - reported by result()
            self.error = exc

    def result(self, timeout_s: float = 30) -> list[tuple[str, dict[str, Any]]]:
        self.join(timeout_s)
        assert not self.is_alive(), "the event stream did not end after the job finished"
        if self.error is not None:
            raise self.error
        return self.events


@dataclass
class Stack:
    home: Path
    database_url: str
    broker_url: str | None
    env: dict[str, str]
    api: Process | None = None
    client: httpx.Client | None = None
    workers: list[Process] = field(default_factory=list)
    database: Database | None = None

    @property
    def settings(self) -> Settings:
        return Settings(DISTILL_HOME=self.home, DATABASE_URL=self.database_url, BROKER_URL=self.broker_url)

    def start(self) -> Process:
        """API and one worker, booted side by side (each takes seconds to import torch)."""
        self.start_api(wait=False)
        worker = self.start_worker()
        wait_until(self._api_up, START_TIMEOUT_S, "the API to answer /healthz")
        return worker

    def start_api(self, wait: bool = True) -> None:
        port = free_port()
        self.api = spawn("api", [DISTILL, "api", "--port", str(port)], self.env, self.home / "logs")
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        if wait:
            wait_until(self._api_up, START_TIMEOUT_S, "the API to answer /healthz")

    def _api_up(self) -> bool:
        assert self.api is not None and self.api.alive(), f"API exited:\n{self.api.log() if self.api else ''}"
        try:
            return self.client.get("/healthz").status_code == 200  # type: ignore[union-attr]
        except httpx.TransportError:
            return False

    def start_worker(self, home: Path | None = None) -> Process:
        """One Celery worker process; `home` gives it a DISTILL_HOME of its own (another "machine")."""
        command = [
            sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "solo", "--concurrency", "1",
            "-Q", "distill", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
            "--hostname", f"w{len(self.workers)}@%h",
        ]  # fmt: skip
        env = self.env if home is None else {**self.env, "DISTILL_HOME": str(home)}
        worker = spawn(f"worker-{len(self.workers)}", command, env, self.home / "logs")
        self.workers.append(worker)

        def ready() -> bool:
            assert worker.alive(), f"worker exited:\n{worker.log()}"
            return worker.pid in present_worker_pids(self.database_url)

        wait_until(ready, START_TIMEOUT_S, "the worker's presence row")
        return worker

    # --- HTTP helpers -------------------------------------------------------------------------------------

    def post_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post("/v1/jobs", json=spec)  # type: ignore[union-attr]
        assert response.status_code == 201, response.text
        return response.json()

    def get_job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/jobs/{job_id}")  # type: ignore[union-attr]
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for_status(self, job_id: str, statuses: set[str], timeout_s: float = 180) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            job = self.get_job(job_id)
            return job if job["status"] in statuses else None

        try:
            return wait_until(reached, timeout_s, f"job {job_id} to reach {sorted(statuses)}", 0.1)
        except AssertionError:
            raise AssertionError(f"job {job_id} stuck at {self.get_job(job_id)}\n{self.logs()}") from None

    def row(self, job_id: str) -> Job:
        """The job's SQL row, read directly: fields the HTTP schema need not show (worker_id, attempts)."""
        if self.database is None:
            self.database = Database(self.database_url)
        with self.database.sessions() as session:
            return repository.get_job(session, job_id)

    def logs(self) -> str:
        parts = [f"--- {p.name} ---\n{p.log()[-6000:]}" for p in [*self.workers, *([self.api] if self.api else [])]]
        return "\n".join(parts)

    def close(self) -> None:
        processes = [*self.workers, *([self.api] if self.api else [])]
        for process in processes:  # all at once: each takes a few seconds to wind down
            if process.alive():
                process.popen.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout_s=20)
        if self.client is not None:
            self.client.close()
        if self.database is not None:
            self.database.dispose()


@pytest.fixture
def stacks(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., Stack]]:
    """Factory: stacks(database_url) -> a Stack with Redis as broker (API and workers started by the test).

    Request `db_url` (or any database fixture) BEFORE this one, so the processes stop before it is dropped.
    """
    made: list[Stack] = []

    def make(database_url: str, **extra_env: str) -> Stack:
        home = tmp_path / f"home{len(made)}"
        home.mkdir()
        broker_url = redis_url.rsplit("/", 1)[0] + f"/{next(_redis_db_numbers) % 16}"
        _flush_redis(broker_url)
        upgrade_database(database_url)  # a no-op when the fixture already migrated it
        env = clean_env(
            DISTILL_HOME=str(home), DATABASE_URL=database_url, BROKER_URL=broker_url, **FAST_ENV, **extra_env
        )
        stack = Stack(home=home, database_url=database_url, broker_url=broker_url, env=env)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'db' / 'distill.db'}"


def _flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
