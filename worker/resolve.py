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
from store.storage import MissingObject, Storage, fetch_cached, get_storage


def resolve_spec(
    session: Session, settings: Settings, stored: dict[str, Any], storage: Storage | None = None
) -> JobSpec:
    """The engine's spec: `dataset.id` -> `dataset.path`, `teacher.weights` model id -> safetensors path
    (fetched from shared storage into this machine's cache first when the store is remote)."""
    storage = storage or get_storage(settings)
    document = {**stored, "dataset": dict(stored.get("dataset") or {}), "teacher": dict(stored.get("teacher") or {})}
    dataset_id = document["dataset"].pop("id", None)
    if dataset_id:
        document["dataset"]["path"] = str(_dataset_path(session, settings, storage, dataset_id))
    model_id = document["teacher"].get("weights")
    if model_id:
        document["teacher"]["weights"] = str(_model_path(session, settings, storage, model_id))
    try:
        return JobSpec.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        raise SpecError(f"stored spec no longer validates: {first['msg']}", field=field) from exc


def _dataset_path(session: Session, settings: Settings, storage: Storage, dataset_id: str) -> Path:
    try:
        record = repository.get_dataset(session, dataset_id)
    except repository.NotFound:
        raise DataError(f"dataset '{dataset_id}' does not exist (deleted?)", field="dataset.id") from None
    # The upload's folder is datasets/<folder>; an npz upload records the file inside it.
    parts = record.relpath.split("/")
    root_key, inner = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        root = fetch_cached(storage, settings, root_key, folder=True)
    except (MissingObject, ValueError):
        raise DataError(f"dataset '{dataset_id}' has no stored files", field="dataset.id") from None
    return root / inner if inner else root


def _model_path(session: Session, settings: Settings, storage: Storage, model_id: str) -> Path:
    try:
        record = repository.get_model(session, model_id)
    except repository.NotFound:
        raise WeightsError(f"model '{model_id}' does not exist (deleted?)", field="teacher.weights") from None
    try:
        return fetch_cached(storage, settings, record.relpath, folder=False)
    except MissingObject:
        raise WeightsError(f"model '{model_id}' has no stored weights", field="teacher.weights") from None
