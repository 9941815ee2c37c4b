"""A soak: 100 small jobs (DISTILL_SOAK_JOBS) through 2 workers while one worker is SIGKILLed every 20 s and replaced.

Every job must end terminal, none lost, none run to completion twice, and every succeeded job's
artifacts download whole. The counts are printed (run with -s to see them).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable

import pytest

from tests.e2e.conftest import TERMINAL, Stack
from tests.faults.support import assert_artifacts_complete, soak_spec
from tests.services import PostgresServer

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

JOBS = int(os.environ.get("DISTILL_SOAK_JOBS", "100"))  # fewer for a quick local run of the same test
KILL_EVERY_S = 20.0
DEADLINE_S = 600.0


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


def test_soak_jobs_through_two_workers_one_killed_every_20s(
    postgres: PostgresServer, stacks: Callable[..., Stack]
) -> None:
    database_url = postgres.url(postgres.create_database(prefix="soak"))
    stack = stacks(database_url)
    stack.env["DISTILL_MAX_ATTEMPTS"] = "10"  # kills are the test, not the job's fault: never give up on one
    stack.start()
    stack.start_worker()
    started = time.monotonic()
    job_ids = [stack.post_job(soak_spec(f"soak-{index}"))["id"] for index in range(JOBS)]

    kills, next_kill, victim = 0, time.monotonic() + KILL_EVERY_S, 0
    while time.monotonic() - started < DEADLINE_S:
        current = statuses(stack, job_ids)
        if all(status in TERMINAL for status in current.values()):
            break
        if time.monotonic() >= next_kill:
            live = [worker for worker in stack.workers if worker.alive()]
            live[victim % len(live)].stop(signal.SIGKILL)
            kills += 1
            victim += 1
            stack.start_worker()
            next_kill = time.monotonic() + KILL_EVERY_S
        time.sleep(1.0)
    elapsed = time.monotonic() - started
    current = statuses(stack, job_ids)

    counts = Counter(current.values())
    retried = sum(1 for job_id in job_ids if stack.row(job_id).attempts > 1)
    logs = [worker.log() for worker in stack.workers]
    finished: Counter[str] = Counter()  # runs that reached their end, by job, over every worker that lived
    for log in logs:
        for line in log.splitlines():
            if "succeeded after" in line and "[job=" in line:
                finished[line.split("[job=", 1)[1].split("]", 1)[0]] += 1
    succeeded = [job_id for job_id, status in current.items() if status == "succeeded"]
    artifacts = sum(assert_artifacts_complete(stack.client, stack.get_job(job_id)) for job_id in succeeded)
    print(f"\nsoak: {JOBS} jobs in {elapsed:.0f}s, {kills} workers SIGKILLed, statuses {dict(counts)}, "
          f"{retried} jobs needed more than one attempt, {artifacts} artifacts downloaded whole")

    assert counts["missing"] == 0, "jobs lost"
    assert set(counts) <= TERMINAL, f"not terminal after {DEADLINE_S:.0f}s: {dict(counts)}\n{stack.logs()}"
    assert counts["succeeded"] == JOBS, dict(counts)
    # every 20 s, once a replacement worker is up (it takes seconds to a minute to boot); fewer means the jobs
    # got too light for the soak to soak (soak_spec sets their size)
    assert kills >= 2, f"only {kills} kills in {elapsed:.0f}s"
    assert [job_id for job_id, count in finished.items() if count > 1] == [], "a job ran to completion twice"
