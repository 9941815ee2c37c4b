"""Which rows a caller may see and which idempotency keys are its own.

Jobs, sweeps, models and datasets carry `owner` (the fingerprint of the API key that created them).
Readers take `owner=None` for "every row" (no keys, an admin, the worker) or a fingerprint, and a row
of another owner is NotFound, exactly like a missing one: an API key cannot even learn that another
key's row exists. Both rules live here so every table applies them the same way.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import ColumnElement, true


def owned(column: Any, owner: str | None) -> ColumnElement[bool]:
    """The rows `owner` may see: all of them for None."""
    return column == owner if owner is not None else true()


def owned_idempotency_key(idempotency_key: str | None, owner: str | None) -> str | None:
    """Idempotency keys are per owner: two API keys choosing the same one get two jobs, and neither
    learns of the other's. Stored as a digest of (owner, key) when there is an owner."""
    if idempotency_key is None or owner is None:
        return idempotency_key
    return "o:" + hashlib.sha256(f"{owner}\n{idempotency_key}".encode()).hexdigest()
