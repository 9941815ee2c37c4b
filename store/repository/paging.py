"""Keyset paging, newest first: the one cursor format, cursor check and order every listing (jobs, sweeps) uses.

Keyset, not offset: rows created while a client pages never shift the pages it has not read. The
cursor is opaque to clients (base64 of created_at + id) but checked on the way in, so a cursor this
service did not issue raises ValueError (the API answers 422) instead of quietly paging from the wrong
place. Each listing fetches one row more than it shows: that row says whether a next page exists.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy import and_, or_

R = TypeVar("R")
S = TypeVar("S")


def encode_cursor(created_at: datetime, row_id: str) -> str:
    """The cursor that resumes a listing after the row (created_at, row_id); always in UTC."""
    raw = f"{created_at.astimezone(timezone.utc).isoformat()}|{row_id}"
    return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, row id) of a cursor from `encode_cursor`; ValueError for anything else.

    A time without a zone is refused: every cursor issued carries +00:00, and a naive time would be
    compared in the database server's zone (or, on SQLite, as text), skipping or repeating rows."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
        created_text, row_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(created_text)
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise ValueError("malformed cursor") from error
    if created_at.tzinfo is None or not row_id:
        raise ValueError("malformed cursor")
    return created_at, row_id


def check_limit(limit: int) -> None:
    """A page shows at least one row: with none there is no last row to continue after."""
    if limit < 1:
        raise ValueError("limit must be at least 1")


def newest_first(statement: S, created_at: Any, row_id: Any, after: tuple[Any, Any] | None = None) -> S:
    """`statement` ordered by (created_at, id) descending, starting just after position `after` when given.

    The id breaks ties between rows created in the same instant, so no row is skipped or repeated.
    `after` holds values (a decoded cursor) or bound parameters (a statement built once)."""
    if after is not None:
        after_created_at, after_id = after
        statement = statement.where(  # type: ignore[attr-defined]
            or_(created_at < after_created_at, and_(created_at == after_created_at, row_id < after_id))
        )
    return statement.order_by(created_at.desc(), row_id.desc())  # type: ignore[attr-defined,no-any-return]


def cut_page(rows: list[R], limit: int, position: Callable[[R], tuple[datetime, str]]) -> tuple[list[R], str | None]:
    """The page among `rows` (fetched with limit + 1) and the cursor after it, or None on the last page.

    `position` gives a row's (created_at, id), wherever the row keeps them."""
    page = rows[:limit]
    next_cursor = encode_cursor(*position(page[-1])) if len(rows) > limit else None
    return page, next_cursor
