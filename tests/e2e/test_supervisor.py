"""The process supervisor behind `distill serve` and `distill worker`, with real Celery worker children."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from store.db import upgrade_database
from tests.e2e.conftest import DISTILL, FAST_ENV, START_TIMEOUT_S, clean_env, present_worker_pids, spawn, wait_until
from worker.supervisor import WorkerProcesses

pytestmark = pytest.mark.slow


def test_a_worker_that_dies_is_restarted_and_stop_ends_every_child(tmp_path: Path, sqlite_url: str) -> None:
    home = tmp_path / "home"
    upgrade_database(sqlite_url)
    workers = WorkerProcesses(1, clean_env(DISTILL_HOME=str(home), DATABASE_URL=sqlite_url, **FAST_ENV))
    workers.start()
    try:
        first = workers.children[0]
        assert first is not None
        wait_until(lambda: first.pid in present_worker_pids(sqlite_url), START_TIMEOUT_S, "the first worker to be ready")

        os.kill(first.pid, signal.SIGKILL)  # e.g. the out-of-memory killer
        replaced = wait_until(
            lambda: (child := workers.children[0]) is not None and child.pid != first.pid and child,
            30, "the supervisor to start a replacement",
        )  # fmt: skip
        wait_until(lambda: replaced.pid in present_worker_pids(sqlite_url), START_TIMEOUT_S, "the replacement to be ready")
        assert workers.alive() == 1
    finally:
        workers.stop()

    assert workers.alive() == 0
    assert replaced.returncode == 0  # a warm shutdown, not a kill
    assert replaced.pid not in present_worker_pids(sqlite_url)


def test_distill_worker_runs_concurrency_processes_and_stops_them_on_sigterm(tmp_path: Path, sqlite_url: str) -> None:
    home = tmp_path / "home"
    upgrade_database(sqlite_url)
    env = clean_env(DISTILL_HOME=str(home), DATABASE_URL=sqlite_url, **FAST_ENV)
    supervisor = spawn("distill-worker", [DISTILL, "worker", "--concurrency", "2"], env, tmp_path / "logs")
    try:
        pids = wait_until(
            lambda: len(found := present_worker_pids(sqlite_url)) == 2 and found,
            START_TIMEOUT_S, f"two workers to be ready\n{supervisor.log()}",
        )  # fmt: skip
    finally:
        returncode = supervisor.stop(signal.SIGTERM, timeout_s=60)  # what `docker stop` sends
    assert returncode == 0, supervisor.log()
    assert present_worker_pids(sqlite_url) == set()  # both withdrew their presence on a clean exit
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
