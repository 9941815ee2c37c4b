"""SQL tables. The job row is the truth about a job; Celery's state is secondary."""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Dialect, ForeignKey, Index, Integer, MetaData, String, Text
from sqlalchemy import UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite has no timezone type and hands back naive values, PostgreSQL hands back
    the session's zone; normalising both to UTC keeps comparisons, ordering and
    pagination cursors identical across the two.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    @staticmethod
    def _as_utc(value: datetime | None) -> datetime | None:
        """The one normalisation, both ways: a naive value is taken as UTC, an aware one converted to it."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return self._as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return self._as_utc(value)


# Deterministic constraint names, so migrations can address them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class JobStatus(str, enum.Enum):
    # waiting: created but not enqueued, until the job it depends on (a sweep's teacher) finishes.
    waiting = "waiting"
    queued = "queued"
    running = "running"
    cancelling = "cancelling"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}


class JobKind(str, enum.Enum):
    distill = "distill"  # the whole run: data, teacher (unless given), student, evaluation, report
    teacher = "teacher"  # a sweep's shared teacher: data and teacher only; its children reuse the weights


class Sweep(Base):
    """A grid of child jobs over one base spec; its state is read from its children."""

    __tablename__ = "sweeps"
    __table_args__ = (Index("ix_sweeps_created", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"base", "grid", "rank_by"} as submitted
    request_sha256: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    rank_by: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Fingerprint (HMAC) of the API key that created it (its jobs carry the same); None without keys.
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)

    jobs: Mapped[list[Job]] = relationship(back_populates="sweep", order_by="Job.sweep_index")


class Job(Base):
    __tablename__ = "jobs"
    # Both end in (created_at, id): the keyset order of list_jobs, with and without a status filter.
    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at", "id"),
        Index("ix_jobs_created", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.queued.value)
    stage: Mapped[str | None] = mapped_column(String(40), nullable=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The digest an Idempotency-Key is checked against (same key + same body -> replay); the column keeps the
    # name it was created with, so the rename needs no migration.
    request_digest: Mapped[str] = mapped_column("spec_sha256", String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_field: Mapped[str | None] = mapped_column(String(200), nullable=True)
    error_where: Mapped[str | None] = mapped_column(String(200), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Bumped on every change a client can see; SSE streams compare it to decide what to send.
    version: Mapped[int] = mapped_column(Integer, default=0)
    # Fingerprint (HMAC) of the API key that created it; None when the service runs without keys.
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(20), default=JobKind.distill.value, server_default="distill")
    sweep_id: Mapped[str | None] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), nullable=True, index=True)
    # Position in the sweep's grid (children 0..n-1); teacher jobs come first with negative positions.
    sweep_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    overrides: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # the grid values of a child
    # The job whose output this one needs (a child's teacher job); the job waits until it ends.
    depends_on: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)

    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="Artifact.name"
    )
    sweep: Mapped[Sweep | None] = relationship(back_populates="jobs")


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(300))  # e.g. "student.safetensors", "heatmaps/0003.png"
    relpath: Mapped[str] = mapped_column(String(500))  # relative to DISTILL_HOME, written by the server only
    content_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="artifacts")


class ModelRecord(Base):
    """Uploaded teacher weights (safetensors) and the architecture they load into."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    arch: Mapped[str] = mapped_column(String(60))
    num_classes: Mapped[int] = mapped_column(Integer)
    in_channels: Mapped[int] = mapped_column(Integer)
    relpath: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Fingerprint (HMAC) of the API key that created it; None when the service runs without keys.
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # The teacher's output order and its own input normalisation ({mean, std}); None = the dataset's.
    class_names: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    normalize: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class DatasetRecord(Base):
    """An uploaded dataset, unpacked under DISTILL_HOME/datasets/<id>/."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))  # "imagefolder" | "npz"
    num_classes: Mapped[int] = mapped_column(Integer)
    in_channels: Mapped[int] = mapped_column(Integer, server_default="3")
    class_names: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"names": [...]}
    num_train: Mapped[int] = mapped_column(Integer)
    num_test: Mapped[int] = mapped_column(Integer)
    # held-out split found in the upload: val/valid/validation/test folder, "arrays" (npz), None = random share
    test_split: Mapped[str | None] = mapped_column(String(20), nullable=True)
    relpath: Mapped[str] = mapped_column(String(500))  # the tree root or the .npz, relative to DISTILL_HOME
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Fingerprint (HMAC) of the API key that created it; None when the service runs without keys.
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)


class WorkerRecord(Base):
    """A worker process that is alive: it rewrites `seen_at` every heartbeat.

    Readiness asks "is any worker answering?" in the database both sides already
    share, so it needs no broker round trip (the filesystem transport has no
    remote control) and sees a worker even while it is busy with a job.
    """

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # What the worker computes on ({"type", "name", "memory_bytes", "count"}), for /readyz and dashboards.
    device: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
