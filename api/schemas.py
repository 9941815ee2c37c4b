"""Response bodies (and request examples) of the v1 API.

Request bodies reuse core.spec.JobSpec as is: one contract for CLI and API.
Every model carries an OpenAPI example so the generated docs show a real call.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from store.models import Artifact, DatasetRecord, Job, JobStatus, ModelRecord

log = logging.getLogger(__name__)

_EXAMPLE_TIME = "2026-01-01T12:00:00Z"
_EXAMPLE_JOB_ID = "job_01hv6xq3k2m8c0f7d9w5n4t3ra"

JOB_SPEC_EXAMPLES: dict[str, dict[str, Any]] = {
    "digits-e2kd": {
        "summary": "e2KD on the built-in digits set, teacher trained first",
        "value": {
            "name": "digits-e2kd",
            "dataset": {"name": "digits", "image_size": 32},
            "teacher": {"arch": "resnet20", "weights": None, "epochs": 15},
            "student": {"arch": "resnet8"},
            "method": "e2kd",
            "loss": {"temperature": 4.0, "explanation": {"weight": 1.0, "distance": "cosine"}},
            "training": {"epochs": 15, "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "seed": 0},
            "report": {"heatmaps": 16},
        },
    },
    "uploaded-teacher": {
        "summary": "Uploaded dataset and teacher weights, MSE explanation loss",
        "value": {
            "name": "flowers-xai-mse",
            "dataset": {"id": "ds_01hv6xq3k2m8c0f7d9w5n4t3rb", "image_size": 64, "shots_per_class": 20},
            "teacher": {"arch": "resnet32", "weights": "mdl_01hv6xq3k2m8c0f7d9w5n4t3rc"},
            "student": {"arch": "cnn"},
            "method": "xai-mse",
            "training": {"epochs": 10},
        },
    },
    "exported-teacher": {
        "summary": "A teacher from your own code (torch.export .pt2 upload), its class order and normalisation",
        "value": {
            "name": "own-resnet-e2kd",
            "dataset": {"id": "ds_01hv6xq3k2m8c0f7d9w5n4t3rb", "image_size": 32},
            "teacher": {
                "weights": "mdl_01hv6xq3k2m8c0f7d9w5n4t3rd",
                "class_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                "truck"],
                "normalize": {"mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.243, 0.261]},
            },
            "student": {"arch": "resnet8"},
            "method": "e2kd",
            "training": {"epochs": 10},
        },
    },
}


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time the API shows is UTC and says so."""
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable error code.")
    message: str = Field(description="What went wrong, for a person.")
    field: str | None = Field(None, description="Dotted path of the offending input, when one input is to blame.")


class ErrorResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"error": {"code": "validation_error", "message": "student.arch: unknown architecture "
                                    "'resnet9'", "field": "student.arch"}}]
        }
    )

    error: ErrorDetail


class ProgressOut(BaseModel):
    model_config = ConfigDict(extra="ignore")

    epoch: int = Field(0, description="1-based epoch within the current stage (0 before the first ends).")
    total_epochs: int = 0
    step: int = Field(0, description="1-based step within the epoch.")
    total_steps: int = 0
    fraction: float = Field(0.0, description="Completion of the whole run, 0..1.")
    metrics: dict[str, float | None] = Field(
        default_factory=dict, description="Latest training metrics (null where a value was not finite)."
    )


class JobErrorOut(BaseModel):
    code: str
    message: str
    field: str | None = None
    where: str | None = Field(None, description="Stage or component where the job failed.")


class ArtifactOut(BaseModel):
    name: str = Field(description="e.g. 'student.safetensors', 'metrics.json', 'heatmaps/0003.png'.")
    size_bytes: int
    content_type: str
    url: str = Field(description="Download path, relative to the API root.")

    @classmethod
    def from_artifact(cls, artifact: Artifact) -> ArtifactOut:
        url = f"/v1/jobs/{quote(artifact.job_id, safe='')}/artifacts/{quote(artifact.name, safe='/')}"
        return cls(name=artifact.name, size_bytes=artifact.size_bytes, content_type=artifact.content_type, url=url)


_JOB_EXAMPLE: dict[str, Any] = {
    "id": _EXAMPLE_JOB_ID,
    "name": "digits-e2kd",
    "status": "running",
    "stage": "distilling",
    "progress": {"epoch": 3, "total_epochs": 15, "step": 12, "total_steps": 23, "fraction": 0.61,
                 "metrics": {"loss": 0.42, "train_accuracy": 0.93}},
    "metrics": None,
    "error": None,
    "attempts": 1,
    "created_at": _EXAMPLE_TIME,
    "started_at": "2026-01-01T12:00:02Z",
    "finished_at": None,
    "artifacts": [],
    "spec": JOB_SPEC_EXAMPLES["digits-e2kd"]["value"],
    "version": 7,
}


class JobOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_JOB_EXAMPLE]})

    id: str
    name: str
    status: JobStatus
    stage: str | None = Field(None, description="Set while running: preparing_data, training_teacher, ...")
    progress: ProgressOut | None = None
    metrics: dict[str, Any] | None = Field(None, description="The run's metrics.json once it succeeded.")
    error: JobErrorOut | None = None
    attempts: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    artifacts: list[ArtifactOut] = Field(default_factory=list)
    spec: dict[str, Any] | None = Field(None, description="The validated job spec, with every default filled in. "
                                        "Left out by `?view=summary`, with `artifacts`.")
    version: int = Field(0, description="Bumped on every change a client can see; the ETag is built from it.")

    @classmethod
    def from_job(cls, job: Job) -> JobOut:
        error = None
        if job.error_code:
            error = JobErrorOut(code=job.error_code, message=job.error_message or "", field=job.error_field,
                                where=job.error_where)
        return cls(
            id=job.id,
            name=job.name,
            status=JobStatus(job.status),
            stage=job.stage,
            progress=_progress(job),
            metrics=job.metrics,
            error=error,
            attempts=job.attempts or 0,
            created_at=as_utc(job.created_at),
            started_at=as_utc(job.started_at),
            finished_at=as_utc(job.finished_at),
            artifacts=[ArtifactOut.from_artifact(artifact) for artifact in job.artifacts],
            spec=job.spec,
            version=job.version or 0,
        )


def _progress(job: Job) -> ProgressOut | None:
    """The worker writes progress; a malformed blob must not turn a GET into a 500."""
    if not job.progress:
        return None
    try:
        return ProgressOut.model_validate(job.progress)
    except ValidationError:
        log.warning("job %s: unreadable progress blob %r", job.id, job.progress)
        return None


class JobPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_JOB_EXAMPLE], "next_cursor": "MjAyNi0..."}]})

    items: list[JobOut]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null on the last page.")


_MODEL_EXAMPLE: dict[str, Any] = {
    "id": "mdl_01hv6xq3k2m8c0f7d9w5n4t3rc", "name": "resnet32-flowers", "arch": "resnet32", "num_classes": 5,
    "in_channels": 3, "size_bytes": 1895432, "sha256": "9f2c" + "0" * 60, "created_at": _EXAMPLE_TIME,
}
_DATASET_EXAMPLE: dict[str, Any] = {
    "id": "ds_01hv6xq3k2m8c0f7d9w5n4t3rb", "name": "flowers", "kind": "imagefolder", "num_classes": 5,
    "class_names": ["daisy", "dandelion", "rose", "sunflower", "tulip"], "in_channels": 3, "num_train": 3000,
    "num_test": 670, "test_split": "val", "size_bytes": 228000000, "created_at": _EXAMPLE_TIME,
}


class ModelOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_MODEL_EXAMPLE]})

    id: str
    name: str
    arch: str
    num_classes: int
    in_channels: int
    size_bytes: int
    sha256: str
    created_at: datetime
    class_names: list[str] | None = Field(None, description="The teacher's output order, when given at upload.")
    normalize: dict[str, list[float]] | None = Field(None, description="The teacher's own {mean, std}, when given.")

    @classmethod
    def from_record(cls, record: ModelRecord) -> ModelOut:
        return cls(id=record.id, name=record.name, arch=record.arch, num_classes=record.num_classes,
                   in_channels=record.in_channels, size_bytes=record.size_bytes, sha256=record.sha256,
                   created_at=as_utc(record.created_at), class_names=record.class_names, normalize=record.normalize)


class ModelList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_MODEL_EXAMPLE]}]})

    items: list[ModelOut]


class DatasetOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_DATASET_EXAMPLE]})

    id: str
    name: str
    kind: str = Field(description="'imagefolder' or 'npz'.")
    num_classes: int
    class_names: list[str]
    in_channels: int = Field(description="Image channels (1 or 3).")
    num_train: int
    num_test: int = Field(description="0 when the upload has no test split (jobs then hold out a seeded share).")
    test_split: str | None = Field(None, description="The held-out split found: the folder name ('val', 'valid', "
                                   "'validation' or 'test'), 'arrays' (npz x_test), or null (a seeded random share).")
    size_bytes: int
    created_at: datetime

    @classmethod
    def from_record(cls, record: DatasetRecord) -> DatasetOut:
        info = record.class_names or {}
        return cls(id=record.id, name=record.name, kind=record.kind, num_classes=record.num_classes,
                   class_names=list(info.get("names", [])), in_channels=record.in_channels,
                   num_train=record.num_train, num_test=record.num_test, test_split=record.test_split,
                   size_bytes=record.size_bytes,
                   created_at=as_utc(record.created_at))


class DatasetList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_DATASET_EXAMPLE]}]})

    items: list[DatasetOut]


class HealthOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: str


class CheckOut(BaseModel):
    ok: bool
    detail: str = ""


class WorkerOut(BaseModel):
    id: str
    hostname: str
    device: dict[str, Any] | None = Field(
        None, description="type (cpu|cuda), name, memory_bytes (CUDA) and count of the devices the worker sees.",
        examples=[{"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85520809984, "count": 1}],
    )


class ReadyOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"status": "ready", "checks": {
                "database": {"ok": True, "detail": "SELECT 1 ok"},
                "broker": {"ok": True, "detail": "connected to redis://redis:6379/0"},
                "worker": {"ok": True, "detail": "1 worker(s) answered ping"}}}]
        }
    )

    status: str = Field(description="'ready' or 'not_ready'.")
    checks: dict[str, CheckOut]
    workers: list[WorkerOut] = Field(
        default_factory=list, description="The workers seen within the last heartbeats, and what each computes on."
    )


# Error responses documented on every route (with the shared example body).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong bearer key (only when keys are configured)."},
    422: {"model": ErrorResponse, "description": "Invalid input; `error.field` names it."},
    503: {"model": ErrorResponse, "description": "The database (`database_unavailable`, with `Retry-After`) or "
          "the file store (`storage_unavailable`) is unreachable; retry shortly."},
}

# Routes that take a body or create something also answer these.
WRITE_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    413: {"model": ErrorResponse, "description": "The body is larger than the limit (`body_too_large`, "
          "DISTILL_MAX_JSON_KB; uploads: `upload_too_large`, DISTILL_MAX_UPLOAD_MB)."},
    429: {"model": ErrorResponse, "description": "Over DISTILL_RATE_LIMIT_PER_MIN for this key (`rate_limited`); "
          "retry after `Retry-After` seconds."},
}


def as_json_errors(responses: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """Error responses of a route whose success is not JSON (SSE): FastAPI would document them in the
    route's media type, but errors are always JSON ErrorResponse bodies."""
    schema = {"$ref": "#/components/schemas/ErrorResponse"}
    return {code: {"description": response["description"], "content": {"application/json": {"schema": schema}}}
            for code, response in responses.items()}


# Uploads stream multipart bodies to the data folder.
UPLOAD_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    **WRITE_ERROR_RESPONSES,
    400: {"model": ErrorResponse, "description": "A malformed or truncated multipart body (`invalid_multipart`)."},
    413: {"model": ErrorResponse, "description": "Larger than DISTILL_MAX_UPLOAD_MB (`upload_too_large`)."},
    415: {"model": ErrorResponse, "description": "Not sent as multipart/form-data (`unsupported_media_type`)."},
    422: {"model": ErrorResponse, "description": "The file is not a usable upload (`invalid_dataset`, "
          "`invalid_weights`: a broken or unknown archive member, an image over DISTILL_MAX_IMAGE_PIXELS, ...) or "
          "an archive breaks the archive rules (`unsafe_archive`: escaping names, DISTILL_MAX_UNPACKED_MB, "
          "DISTILL_MAX_ZIP_RATIO); `error.field` is `file`."},
    503: {"model": ErrorResponse, "description": "DISTILL_UPLOAD_CHECKS uploads are being checked already "
          "(`upload_checks_busy`, with `Retry-After`), or the database or file store is unreachable."},
    507: {"model": ErrorResponse, "description": "The server's data folder is full (`storage_full`); nothing kept."},
}
