"""The worker's side of a job spec: the stored spec as the engine runs it, and the uploads it names.

The API accepts only ids of uploads, and the spec keeps them all the way into the engine: the
engine asks `StoredUploads` (its core.resolver.Resolver) for the file behind an id, and only here,
on the server, does an id become a path under DISTILL_HOME. So no client-given path reaches the
engine, and no server path reaches the spec, metrics.json or the run's resume identity.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy.orm import Session

from core.errors import DataError, SpecError, WeightsError
from core.spec import JobSpec
from store import repository
from store.settings import Settings
from store.storage import MissingObject, Storage, fetch_cached, get_storage

T = TypeVar("T")
Retry = Callable[[str, Callable[[], T]], T]


def parse_stored_spec(stored: dict[str, Any]) -> JobSpec:
    """The spec as stored, validated by this worker's engine (the one the API validated may be older):
    a spec that no longer validates is the user's SpecError, naming its field."""
    try:
        return JobSpec.model_validate(stored)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        raise SpecError(f"stored spec no longer validates: {first['msg']}", field=field) from exc


def _no_retry(what: str, step: Callable[[], T]) -> T:
    return step()


class StoredUploads:
    """The engine's resolver in a worker: upload ids -> this machine's copy of the store's files (fetched
    from shared storage into the local cache first when the store is remote).

    `retry` wraps each lookup, so a database outage is waited out rather than failing the job."""

    def __init__(
        self, sessions: Callable[[], Session], settings: Settings, storage: Storage | None = None,
        retry: Retry[Path] = _no_retry,
    ) -> None:
        self._sessions, self._settings, self._retry = sessions, settings, retry
        self._storage = storage or get_storage(settings)

    def resolve_dataset(self, dataset_id: str) -> Path:
        return self._retry(f"resolve dataset {dataset_id}", lambda: self._dataset_path(dataset_id))

    def resolve_weights(self, reference: str) -> Path:
        return self._retry(f"resolve model {reference}", lambda: self._model_path(reference))

    def _dataset_path(self, dataset_id: str) -> Path:
        try:
            with self._sessions() as session:
                relpath = repository.get_dataset(session, dataset_id).relpath
        except repository.NotFound:
            raise DataError(f"dataset '{dataset_id}' does not exist (deleted?)", field="dataset.id") from None
        # The upload's folder is datasets/<folder>; an npz upload records the file inside it.
        parts = relpath.split("/")
        root_key, inner = "/".join(parts[:2]), "/".join(parts[2:])
        try:
            root = fetch_cached(self._storage, self._settings, root_key, folder=True)
        except (MissingObject, ValueError):
            raise DataError(f"dataset '{dataset_id}' has no stored files", field="dataset.id") from None
        return root / inner if inner else root

    def _model_path(self, model_id: str) -> Path:
        try:
            with self._sessions() as session:
                relpath = repository.get_model(session, model_id).relpath
        except repository.NotFound:
            raise WeightsError(f"model '{model_id}' does not exist (deleted?)", field="teacher.weights") from None
        try:
            return fetch_cached(self._storage, self._settings, relpath, folder=False)
        except MissingObject:
            raise WeightsError(f"model '{model_id}' has no stored weights", field="teacher.weights") from None
