"""list_jobs: keyset pages, newest first, complete and without repeats; the cursor is opaque and checked."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy.orm import Session

from store import repository
from store.models import JobStatus
from store.sweeps import list_sweeps
from tests.store.support import force_state, make_job


def _all_pages(session: Session, status: JobStatus | None, limit: int) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        page, cursor = repository.list_jobs(session, status, limit, cursor)
        pages.append([job.id for job in page])
        if cursor is None:
            return pages


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_pages_cover_every_job_once_newest_first(session: Session) -> None:
    base = datetime(2025, 1, 1, tzinfo=timezone.utc)
    ids = []
    for index in range(11):
        job = make_job(session, name=f"job-{index}")
        force_state(session, job.id, created_at=base + timedelta(seconds=index))
        ids.append(job.id)

    pages = _all_pages(session, None, limit=4)

    assert [len(page) for page in pages] == [4, 4, 3]
    assert [job_id for page in pages for job_id in page] == list(reversed(ids))


def test_jobs_created_in_the_same_instant_are_neither_skipped_nor_repeated(session: Session) -> None:
    instant = datetime(2025, 1, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    ids = []
    for index in range(7):
        job = make_job(session, name=f"job-{index}")
        force_state(session, job.id, created_at=instant)
        ids.append(job.id)

    pages = _all_pages(session, None, limit=3)

    assert [job_id for page in pages for job_id in page] == sorted(ids, reverse=True)


def test_jobs_created_while_paging_do_not_shift_later_pages(session: Session) -> None:
    ids = [make_job(session, name=f"job-{index}").id for index in range(6)]
    first, cursor = repository.list_jobs(session, None, 3, None)

    make_job(session, name="late")
    second, cursor = repository.list_jobs(session, None, 3, cursor)

    assert [job.id for job in first + second] == list(reversed(ids))
    assert cursor is None


def test_status_filter_pages_only_that_status(session: Session) -> None:
    running = []
    for index in range(7):
        job = make_job(session, name=f"job-{index}")
        if index % 2 == 0:
            force_state(session, job.id, status=JobStatus.running.value)
            running.append(job.id)

    pages = _all_pages(session, JobStatus.running, limit=2)

    listed = [job_id for page in pages for job_id in page]
    assert sorted(listed) == sorted(running) and len(listed) == len(set(listed))
    queued, _ = repository.list_jobs(session, JobStatus.queued, 10, None)
    assert {job.status for job in queued} == {"queued"} and len(queued) == 3


def test_exact_multiple_of_the_limit_ends_with_no_cursor(session: Session) -> None:
    for index in range(4):
        make_job(session, name=f"job-{index}")

    page, cursor = repository.list_jobs(session, None, 4, None)

    assert len(page) == 4 and cursor is None


def test_listed_jobs_are_readable_after_the_session_closes(session: Session) -> None:
    make_job(session)
    page, _ = repository.list_jobs(session, None, 10, None)
    session.close()

    assert page[0].artifacts == [] and page[0].spec["method"] == "e2kd"


MALFORMED_CURSORS = pytest.mark.parametrize(
    "cursor",
    [
        "not base64 at all!",
        _cursor("no separator"),
        _cursor("yesterday|job_0000000000000000"),
        _cursor("2025-01-01T00:00:00|job_0000000000000000"),  # no timezone: not one we issued
        _cursor("2025-01-01T00:00:00+00:00|"),
        base64.urlsafe_b64encode(b"\xff\xfe\x00").decode(),
    ],
    ids=["garbage", "no-separator", "not-a-time", "naive-time", "no-id", "not-utf8"],
)


@MALFORMED_CURSORS
def test_malformed_cursor_raises_value_error(session: Session, cursor: str) -> None:
    with pytest.raises(ValueError, match="cursor"):
        repository.list_jobs(session, None, 10, cursor)


@MALFORMED_CURSORS
def test_a_sweep_cursor_is_checked_like_a_job_cursor(session: Session, cursor: str) -> None:
    with pytest.raises(ValueError, match="cursor"):
        list_sweeps(session, 10, cursor)


def test_limit_below_one_raises_value_error(session: Session) -> None:
    with pytest.raises(ValueError, match="limit"):
        repository.list_jobs(session, None, 0, None)
