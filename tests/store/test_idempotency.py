"""Idempotency-Key: a retried POST returns the first job; a reused key with another body is a conflict."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.spec.sweep import Child
from store import repository
from store.db import Database
from store.models import Job, Sweep
from store.repository import IdempotencyConflict
from store.sweeps import SweepPlan, create_sweep
from tests.store.support import spec


def _job_count(session: Session) -> int:
    count = session.scalar(select(func.count()).select_from(Job))
    session.commit()
    return count


def test_same_key_and_same_body_return_the_existing_job(session: Session) -> None:
    first, first_created = repository.create_job(session, spec(), "a", idempotency_key="key-1")
    second, second_created = repository.create_job(session, spec(), "a", idempotency_key="key-1")

    assert (first_created, second_created) == (True, False)
    assert second.id == first.id
    assert _job_count(session) == 1


def test_key_order_of_the_body_does_not_matter(session: Session) -> None:
    body = spec()
    reordered = dict(reversed(list(body.items())))
    first, _ = repository.create_job(session, body, "a", idempotency_key="key-1")

    second, created = repository.create_job(session, reordered, "a", idempotency_key="key-1")

    assert (second.id, created) == (first.id, False)


def test_same_key_with_another_body_is_a_conflict(session: Session) -> None:
    repository.create_job(session, spec(), "a", idempotency_key="key-1")

    with pytest.raises(IdempotencyConflict, match="key-1"):
        repository.create_job(session, spec(method="kd"), "a", idempotency_key="key-1")

    assert _job_count(session) == 1


def test_without_a_key_every_post_creates_a_job(session: Session) -> None:
    first, _ = repository.create_job(session, spec(), "a")
    second, _ = repository.create_job(session, spec(), "a")

    assert first.id != second.id
    assert first.id.startswith("job_") and len(first.id) == 4 + 16
    assert _job_count(session) == 2


def test_different_keys_create_different_jobs(session: Session) -> None:
    first, _ = repository.create_job(session, spec(), "a", idempotency_key="key-1")
    second, _ = repository.create_job(session, spec(), "a", idempotency_key="key-2")

    assert first.id != second.id


def _race(database: Database, contenders: int, create: Callable[[Session], tuple[str, bool]]) -> list[tuple[str, bool]]:
    """Run `create` (-> (id, created)) in `contenders` threads released at once, each with its own session;
    any exception in a thread fails the test."""
    barrier = threading.Barrier(contenders)
    outcomes: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def post() -> None:
        try:
            with database.session() as session:
                barrier.wait(timeout=30)
                outcomes.append(create(session))
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=post) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    return outcomes


def _one_created(outcomes: list[tuple[str, bool]]) -> bool:
    """Every contender got the same row, and exactly one of them created it."""
    created = sorted(flag for _, flag in outcomes)
    return len({row_id for row_id, _ in outcomes}) == 1 and created == [False] * (len(outcomes) - 1) + [True]


def test_concurrent_posts_with_one_key_create_one_job(database: Database) -> None:
    def create(session: Session) -> tuple[str, bool]:
        job, created = repository.create_job(session, spec(), "a", idempotency_key="shared-key")
        return job.id, created

    outcomes = _race(database, 6, create)

    assert len(outcomes) == 6 and _one_created(outcomes)
    with database.session() as session:
        assert _job_count(session) == 1


def _sweep_plan(**request: object) -> SweepPlan:
    children = [Child(0, {"training.seed": 0}, spec()), Child(1, {"training.seed": 1}, spec(name="other"))]
    return SweepPlan("s", {"grid": {"training.seed": [0, 1]}, **request}, "student_accuracy", children)


def test_a_sweep_key_replays_the_sweep_and_refuses_another_request(session: Session) -> None:
    first, created, queued = create_sweep(session, _sweep_plan(), "sweep-key")
    again = create_sweep(session, _sweep_plan(), "sweep-key")

    assert created and queued and again == (first, False, [])
    with pytest.raises(IdempotencyConflict, match="sweep-key"):
        create_sweep(session, _sweep_plan(rank_by="other"), "sweep-key")


def test_concurrent_sweeps_with_one_key_create_one_sweep(database: Database) -> None:
    def create(session: Session) -> tuple[str, bool]:
        sweep, created, _ = create_sweep(session, _sweep_plan(), "shared-sweep-key")
        return sweep.id, created

    outcomes = _race(database, 4, create)

    assert len(outcomes) == 4 and _one_created(outcomes)
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(Sweep)) == 1
        assert _job_count(session) == 3  # one shared teacher and two children
