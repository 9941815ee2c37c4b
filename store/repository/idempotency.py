"""Idempotent creation: a retried POST with the same Idempotency-Key answers with the row it created first.

The request digest says whether a retry is "the same request": same key + same digest -> the earlier
row (replay); same key + another digest -> IdempotencyConflict. Jobs and sweeps both create rows this
way, so the lookup, the replay and the handling of a race are written once, here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store.repository.errors import IdempotencyConflict

R = TypeVar("R")


def request_digest(body: dict[str, Any]) -> str:
    """The digest that tells a replay from a conflict. Key order and whitespace do not change it: equal
    bodies are the same request however a client serialised them."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KeyedRows(Generic[R]):
    """A table whose rows are created under an Idempotency-Key (unique in the table).

    `lookup` selects the row whose key equals the bound parameter `key`, loaded the way callers
    read it; `digest_of` reads the request digest stored with a row; `conflict` is the
    IdempotencyConflict message, formatted with `key` and the earlier row's `id`."""

    lookup: Any
    digest_of: Callable[[R], str]
    conflict: str

    def find(self, session: Session, key: str) -> R | None:
        """The row created under `key`, if any (does not commit)."""
        return session.scalars(self.lookup, {"key": key}).one_or_none()  # type: ignore[no-any-return]

    def replay(self, existing: R, digest: str, key: str) -> R:
        """`existing` when it was created from the same request; IdempotencyConflict when from another."""
        if self.digest_of(existing) != digest:
            raise IdempotencyConflict(self.conflict.format(key=key, id=existing.id))  # type: ignore[attr-defined]
        return existing


def create_once(
    session: Session, rows: KeyedRows[R], key: str | None, digest: str, insert: Callable[[], R]
) -> tuple[R, bool]:
    """(the new row, True) once `insert` has added it and the commit succeeded; (the earlier row, False)
    when `key` was used before with the same digest; IdempotencyConflict when with another digest.

    The lookup first answers a plain retry without touching the table. Two concurrent requests
    with one key cannot both insert: the unique key rejects the second, which then answers with
    the first one's row. `insert` runs inside that guard, so a clash raised by a flush it makes
    is handled like one raised by the commit."""
    if key is not None:
        existing = rows.find(session, key)
        session.commit()
        if existing is not None:
            return rows.replay(existing, digest, key), False
    try:
        row = insert()
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = rows.find(session, key) if key is not None else None
        session.commit()
        if existing is None or key is None:  # the clash was not on the key: a real error
            raise
        return rows.replay(existing, digest, key), False
    return row, True
