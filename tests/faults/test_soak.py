"""A soak: 100 small jobs (DISTILL_SOAK_JOBS) through 2 workers while one worker is SIGKILLed every 20 s and replaced.

Every job must end terminal, none lost, none run to completion twice, and every succeeded job's
artifacts download whole. The counts are printed (run with -s to see them).

The jobs arrive at a steady pace over SUBMIT_WINDOW_S rather than all at once, so the soak lasts
long enough for several kills on a fast machine, while each job stays small enough that a machine
several times slower still drains the queue well within the deadline. The victim is a worker that
is running a job (a kill mid-training is the fault under test), never one still booting.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from tests.e2e.conftest import TERMINAL, Process, Stack, running_worker_pids
from tests.faults.support import assert_artifacts_complete, small_spec
from tests.services import PostgresServer

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(1200)]

JOBS = int(os.environ.get("DISTILL_SOAK_JOBS", "100"))  # fewer for a quick local run of the same test
KILL_EVERY_S = 20.0
SUBMIT_WINDOW_S = 75.0
DEADLINE_S = 720.0


def statuses(stack: Stack, job_ids: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    cursor = None
    while True:
        page = stack.client.get("/v1/jobs", params={"limit": 100, "view": "summary",  # type: ignore[union-attr]
                                                    **({"cursor": cursor} if cursor else {})}).json()
        found.update({job["id"]: job["status"] for job in page["items"]})
        cursor = page["next_cursor"]
        if cursor is None:
            return {job_id: found.get(job_id, "missing") for job_id in job_ids}


class PacedSubmitter(threading.Thread):
    """Posts the soak's jobs one every SUBMIT_WINDOW_S / JOBS seconds (the kill loop blocks while a
    replacement worker boots, so the pace is kept on a thread of its own)."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.job_ids: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        started = time.monotonic()
        try:
            for index in range(JOBS):
                time.sleep(max(0.0, started + index * SUBMIT_WINDOW_S / JOBS - time.monotonic()))
                self.job_ids.append(self.stack.post_job(small_spec(f"soak-{index}"))["id"])
        except BaseException as exc:  # noqa: BLE001 - reported by the test's own thread
            self.error = exc


def pick_victim(stack: Stack) -> Process | None:
    """A live worker in the middle of a job; None when every live worker is between jobs."""
    busy = running_worker_pids(stack.database_url)
    return next((worker for worker in stack.workers if worker.alive() and worker.pid in busy), None)


def test_soak_jobs_through_two_workers_one_killed_every_20s(
    postgres: PostgresServer, stacks: Callable[..., Stack]
) -> None:
    database_url = postgres.url(postgres.create_database(prefix="soak"))
    stack = stacks(database_url)
    stack.env["DISTILL_MAX_ATTEMPTS"] = "10"  # kills are the test, not the job's fault: never give up on one
    stack.start()
    stack.start_worker()
    submitter = PacedSubmitter(stack)
    started = time.monotonic()
    submitter.start()

    kills, next_kill = 0, time.monotonic() + KILL_EVERY_S
    while time.monotonic() - started < DEADLINE_S:
        assert submitter.error is None, f"posting a soak job failed: {submitter.error!r}"
        current = statuses(stack, list(submitter.job_ids))
        if not submitter.is_alive() and all(status in TERMINAL for status in current.values()):
            break
        victim = pick_victim(stack) if time.monotonic() >= next_kill else None
        if victim is not None:
            victim.stop(signal.SIGKILL)
            kills += 1
            stack.start_worker()  # returns once the replacement is booted and present
            next_kill = time.monotonic() + KILL_EVERY_S
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    submitter.join(timeout=5)
    job_ids = submitter.job_ids
    current = statuses(stack, job_ids)

    counts = Counter(current.values())
    retried = sum(1 for job_id in job_ids if stack.row(job_id).attempts > 1)
    finished: Counter[str] = Counter()  # runs that reached their end, by job, over every worker that lived
    resent = 0
    for worker in stack.workers:
        for line in worker.log().splitlines():
            if "succeeded after" in line and "[job=" in line:
                finished[line.split("[job=", 1)[1].split("]", 1)[0]] += 1
            resent += "enqueued again" in line
    succeeded = [job_id for job_id, status in current.items() if status == "succeeded"]
    artifacts = sum(assert_artifacts_complete(stack.client, stack.get_job(job_id)) for job_id in succeeded)
    print(f"\nsoak: {len(job_ids)} jobs in {elapsed:.0f}s, {kills} workers SIGKILLed mid-job, statuses {dict(counts)}, "
          f"{retried} jobs needed more than one attempt, {resent} messages re-sent by sweepers, "
          f"{artifacts} artifacts downloaded whole")

    assert len(job_ids) == JOBS
    assert counts["missing"] == 0, "jobs lost"
    assert set(counts) <= TERMINAL, f"not terminal after {DEADLINE_S:.0f}s: {dict(counts)}\n{stack.logs()}"
    assert counts["succeeded"] == JOBS, dict(counts)
    # the paced submissions keep the workers busy past two kill periods even on a fast machine
    assert kills >= 2, f"only {kills} kills in {elapsed:.0f}s"
    assert retried >= 1, "no killed job was retried: the kills missed every running job"
    assert [job_id for job_id, count in finished.items() if count > 1] == [], "a job ran to completion twice"
