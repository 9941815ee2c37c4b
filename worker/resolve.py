"""From the stored spec (ids a client gave) to the spec the engine runs (server paths).

The API accepts only ids of uploads; only here, on the server, do ids become
paths under DISTILL_HOME, so no client-given path ever reaches the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from core.errors import DataError, SpecError, WeightsError
from core.spec import JobSpec
from store import repository
from store.settings import Settings


def resolve_spec(session: Session, settings: Settings, stored: dict[str, Any]) -> JobSpec:
    """The engine's spec: `dataset.id` -> `dataset.path`, `teacher.weights` model id -> safetensors path."""
    document = {**stored, "dataset": dict(stored.get("dataset") or {}), "teacher": dict(stored.get("teacher") or {})}
    dataset_id = document["dataset"].pop("id", None)
    if dataset_id:
        document["dataset"]["path"] = str(_dataset_path(session, settings, dataset_id))
    model_id = document["teacher"].get("weights")
    if model_id:
        document["teacher"]["weights"] = str(_model_path(session, settings, model_id))
    try:
        return JobSpec.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        raise SpecError(f"stored spec no longer validates: {first['msg']}", field=field) from exc


def _dataset_path(session: Session, settings: Settings, dataset_id: str) -> Path:
    try:
        record = repository.get_dataset(session, dataset_id)
    except repository.NotFound:
        raise DataError(f"dataset '{dataset_id}' does not exist (deleted?)", field="dataset.id") from None
    return settings.distill_home / record.relpath


def _model_path(session: Session, settings: Settings, model_id: str) -> Path:
    try:
        record = repository.get_model(session, model_id)
    except repository.NotFound:
        raise WeightsError(f"model '{model_id}' does not exist (deleted?)", field="teacher.weights") from None
    return settings.distill_home / record.relpath
