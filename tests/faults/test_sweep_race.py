"""Twenty identical POST /v1/sweeps with one Idempotency-Key at once, over HTTP to a real `distill api`:
one 201, the rest 200 with the same sweep, never a 500 (the unique-key race on the sweeps table)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
from sqlalchemy import func, select

from store.db import Database
from store.models import Sweep
from tests.api.test_sweeps import sweep_body
from tests.e2e.conftest import Stack

CONTENDERS = 20


def test_twenty_concurrent_identical_sweeps_create_one(db_url: str, stacks: Callable[..., Stack]) -> None:
    stack = stacks(db_url)
    stack.start_api()
    base_url = str(stack.client.base_url)  # type: ignore[union-attr]
    barrier = threading.Barrier(CONTENDERS)
    answers: list[tuple[int, str]] = []

    def post() -> None:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            barrier.wait(timeout=30)
            response = client.post("/v1/sweeps", json=sweep_body(), headers={"Idempotency-Key": "race-key"})
            answers.append((response.status_code, response.json().get("id", response.text)))

    threads = [threading.Thread(target=post) for _ in range(CONTENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * (CONTENDERS - 1) + [201], answers
    assert len({sweep_id for _, sweep_id in answers}) == 1
    database = Database(db_url)
    try:
        with database.session() as session:
            assert session.scalar(select(func.count()).select_from(Sweep)) == 1
    finally:
        database.dispose()
