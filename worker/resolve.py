"""The worker's side of a job spec: the stored spec as the engine runs it, and the uploads it names.

The API accepts only ids of uploads, and the spec keeps them all the way into the engine: the
engine asks `StoredUploads` (its core.resolver.Resolver) for the file behind an id, and only here,
on the server, does an id become a path under DISTILL_HOME. So no client-given path reaches the
engine, and no server path reaches the spec, metrics.json or the run's resume identity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy.orm import Session

from core.errors import DataError, DistillError, SpecError, WeightsError
from core.spec import JobSpec
from store import repository
from store.models import DatasetRecord, ModelRecord
from store.settings import Settings
from store.storage import MissingObject, Storage, fetch_cached, get_storage
from worker.bucket_datasets import BUCKET_KINDS, local_tree

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


@dataclass(frozen=True)
class _UploadKind:
    """What differs between resolving a dataset and a teacher's weights: the row's lookup, and the error
    and spec field a missing upload is reported as (the user fixes the spec, so it is not a crash)."""

    noun: str
    lookup: Callable[[Session, str], DatasetRecord | ModelRecord]
    error: type[DistillError]
    field: str

    def failure(self, upload_id: str, problem: str) -> DistillError:
        return self.error(f"{self.noun} '{upload_id}' {problem}", field=self.field)


_DATASET = _UploadKind("dataset", repository.get_dataset, DataError, "dataset.id")
_MODEL = _UploadKind("model", repository.get_model, WeightsError, "teacher.weights")


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
        record = self._record(_DATASET, dataset_id)
        if record.kind in BUCKET_KINDS:  # registered by reference: its objects stay in a bucket
            return local_tree(self._settings, record)
        relpath = record.relpath
        # The upload's folder is datasets/<folder>; an npz upload records the file inside it.
        parts = relpath.split("/")
        root_key, inner = "/".join(parts[:2]), "/".join(parts[2:])
        try:
            root = fetch_cached(self._storage, self._settings, root_key, folder=True)
        except (MissingObject, ValueError):
            raise _DATASET.failure(dataset_id, "has no stored files") from None
        return root / inner if inner else root

    def _model_path(self, model_id: str) -> Path:
        relpath = self._relpath(_MODEL, model_id)
        try:
            return fetch_cached(self._storage, self._settings, relpath, folder=False)
        except MissingObject:
            raise _MODEL.failure(model_id, "has no stored weights") from None

    def _relpath(self, kind: _UploadKind, upload_id: str) -> str:
        """The stored path of an upload row."""
        return self._record(kind, upload_id).relpath

    def _record(self, kind: _UploadKind, upload_id: str) -> DatasetRecord | ModelRecord:
        """An upload's row; a row deleted since the job was created fails the job as the user's error on the
        spec field that named it, not as a crash."""
        try:
            with self._sessions() as session:
                return kind.lookup(session, upload_id)
        except repository.NotFound:
            raise kind.failure(upload_id, "does not exist (deleted?)") from None
