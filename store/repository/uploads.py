"""Uploaded teacher models and datasets: rows that jobs reference by id, visible only to their owner."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import DatasetRecord, ModelRecord, utcnow
from store.repository.errors import NotFound
from store.repository.ids import new_dataset_id, new_model_id
from store.repository.ownership import owned

logger = logging.getLogger(__name__)

# The two upload tables share id, created_at and owner, so one body serves both; the public functions
# below only name the table, the id minter and the word used in messages.
UploadRecord = TypeVar("UploadRecord", ModelRecord, DatasetRecord)


def _create(session: Session, record: UploadRecord, new_id: Callable[[], str]) -> UploadRecord:
    """Fill in a missing id and created_at, then insert."""
    record.id = record.id or new_id()
    record.created_at = record.created_at or utcnow()
    session.add(record)
    session.commit()
    return record


def _get(session: Session, table: type[UploadRecord], noun: str, row_id: str, owner: str | None) -> UploadRecord:
    """Another owner's row is NotFound with the same message as a missing one, so it cannot be probed."""
    record = session.get(table, row_id)
    session.commit()
    if record is None or (owner is not None and record.owner != owner):
        raise NotFound(f"{noun} {row_id} not found")
    return record


def _list(session: Session, table: type[UploadRecord], limit: int, owner: str | None) -> list[UploadRecord]:
    """Newest first; the id breaks ties so pages are stable when two rows share a timestamp."""
    records = list(
        session.scalars(
            select(table)
            .where(owned(table.owner, owner))
            .order_by(table.created_at.desc(), table.id.desc())
            .limit(limit)
        )
    )
    session.commit()
    return records


def create_model(session: Session, record: ModelRecord) -> ModelRecord:
    """Insert; an id ('mdl_...') and created_at are filled in when missing."""
    _create(session, record, new_model_id)
    logger.info("model %s: recorded (%s, %s)", record.id, record.name, record.arch)
    return record


def get_model(session: Session, model_id: str, owner: str | None = None) -> ModelRecord:
    """NotFound when absent or owned by another key."""
    return _get(session, ModelRecord, "model", model_id, owner)


def list_models(session: Session, limit: int = 100, owner: str | None = None) -> list[ModelRecord]:
    """Newest first."""
    return _list(session, ModelRecord, limit, owner)


def create_dataset(session: Session, record: DatasetRecord) -> DatasetRecord:
    """Insert; an id ('ds_...') and created_at are filled in when missing."""
    _create(session, record, new_dataset_id)
    logger.info("dataset %s: recorded (%s, %s)", record.id, record.name, record.kind)
    return record


def get_dataset(session: Session, dataset_id: str, owner: str | None = None) -> DatasetRecord:
    """NotFound when absent or owned by another key."""
    return _get(session, DatasetRecord, "dataset", dataset_id, owner)


def list_datasets(session: Session, limit: int = 100, owner: str | None = None) -> list[DatasetRecord]:
    """Newest first."""
    return _list(session, DatasetRecord, limit, owner)
