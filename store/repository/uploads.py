"""Uploaded teacher models and datasets: rows that jobs reference by id, visible only to their owner."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import DatasetRecord, ModelRecord, utcnow
from store.repository.errors import NotFound
from store.repository.ids import new_dataset_id, new_model_id
from store.repository.ownership import owned

logger = logging.getLogger(__name__)


def create_model(session: Session, record: ModelRecord) -> ModelRecord:
    """Insert; an id ('mdl_...') and created_at are filled in when missing."""
    record.id = record.id or new_model_id()
    record.created_at = record.created_at or utcnow()
    session.add(record)
    session.commit()
    logger.info("model %s: recorded (%s, %s)", record.id, record.name, record.arch)
    return record


def get_model(session: Session, model_id: str, owner: str | None = None) -> ModelRecord:
    """NotFound when absent or owned by another key."""
    record = session.get(ModelRecord, model_id)
    session.commit()
    if record is None or (owner is not None and record.owner != owner):
        raise NotFound(f"model {model_id} not found")
    return record


def list_models(session: Session, limit: int = 100, owner: str | None = None) -> list[ModelRecord]:
    """Newest first."""
    records = list(
        session.scalars(
            select(ModelRecord)
            .where(owned(ModelRecord.owner, owner))
            .order_by(ModelRecord.created_at.desc(), ModelRecord.id.desc())
            .limit(limit)
        )
    )
    session.commit()
    return records


def create_dataset(session: Session, record: DatasetRecord) -> DatasetRecord:
    """Insert; an id ('ds_...') and created_at are filled in when missing."""
    record.id = record.id or new_dataset_id()
    record.created_at = record.created_at or utcnow()
    session.add(record)
    session.commit()
    logger.info("dataset %s: recorded (%s, %s)", record.id, record.name, record.kind)
    return record


def get_dataset(session: Session, dataset_id: str, owner: str | None = None) -> DatasetRecord:
    """NotFound when absent or owned by another key."""
    record = session.get(DatasetRecord, dataset_id)
    session.commit()
    if record is None or (owner is not None and record.owner != owner):
        raise NotFound(f"dataset {dataset_id} not found")
    return record


def list_datasets(session: Session, limit: int = 100, owner: str | None = None) -> list[DatasetRecord]:
    """Newest first."""
    records = list(
        session.scalars(
            select(DatasetRecord)
            .where(owned(DatasetRecord.owner, owner))
            .order_by(DatasetRecord.created_at.desc(), DatasetRecord.id.desc())
            .limit(limit)
        )
    )
    session.commit()
    return records
