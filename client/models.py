"""Typed views of the service's JSON documents (jobs, models, datasets).

Plain frozen dataclasses built from the JSON by `from_json`, tolerant of fields a
newer server adds (they stay reachable in `raw`). Nothing here is shared with the
server's own schemas: the client knows the service only through HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True)
class Progress:
    epoch: int = 0
    total_epochs: int = 0
    step: int = 0
    total_steps: int = 0
    fraction: float = 0.0
    metrics: dict[str, float | None] = field(default_factory=dict)

    @classmethod
    def from_json(cls, document: dict[str, Any] | None) -> Progress | None:
        if not document:
            return None
        return cls(
            epoch=int(document.get("epoch") or 0),
            total_epochs=int(document.get("total_epochs") or 0),
            step=int(document.get("step") or 0),
            total_steps=int(document.get("total_steps") or 0),
            fraction=float(document.get("fraction") or 0.0),
            metrics=dict(document.get("metrics") or {}),
        )


@dataclass(frozen=True)
class JobError:
    code: str
    message: str
    field: str | None = None
    where: str | None = None


@dataclass(frozen=True)
class Artifact:
    name: str
    size_bytes: int
    content_type: str
    url: str


@dataclass(frozen=True)
class Job:
    id: str
    name: str
    status: str
    stage: str | None
    progress: Progress | None
    metrics: dict[str, Any] | None
    error: JobError | None
    attempts: int
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    artifacts: list[Artifact]
    spec: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def finished(self) -> bool:
        """True once the job can no longer change (succeeded, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Job:
        error = document.get("error")
        return cls(
            id=document["id"],
            name=document.get("name", ""),
            status=document["status"],
            stage=document.get("stage"),
            progress=Progress.from_json(document.get("progress")),
            metrics=document.get("metrics"),
            error=JobError(error.get("code", ""), error.get("message", ""), error.get("field"), error.get("where"))
            if error else None,
            attempts=int(document.get("attempts") or 0),
            created_at=_time(document.get("created_at")),
            started_at=_time(document.get("started_at")),
            finished_at=_time(document.get("finished_at")),
            artifacts=[Artifact(a["name"], int(a.get("size_bytes", 0)), a.get("content_type", ""), a["url"])
                       for a in document.get("artifacts") or []],
            spec=document.get("spec") or {},
            raw=document,
        )


@dataclass(frozen=True)
class Model:
    id: str
    name: str
    arch: str
    num_classes: int
    in_channels: int
    size_bytes: int
    sha256: str
    created_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Model:
        return cls(id=document["id"], name=document.get("name", ""), arch=document.get("arch", ""),
                   num_classes=int(document.get("num_classes", 0)), in_channels=int(document.get("in_channels", 0)),
                   size_bytes=int(document.get("size_bytes", 0)), sha256=document.get("sha256", ""),
                   created_at=_time(document.get("created_at")), raw=document)


@dataclass(frozen=True)
class Dataset:
    id: str
    name: str
    kind: str
    num_classes: int
    class_names: list[str]
    in_channels: int
    num_train: int
    num_test: int
    size_bytes: int
    created_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    test_split: str | None = None  # val/valid/validation/test, "arrays" (npz), None = a random held-out share

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Dataset:
        return cls(id=document["id"], name=document.get("name", ""), kind=document.get("kind", ""),
                   num_classes=int(document.get("num_classes", 0)),
                   class_names=list(document.get("class_names") or []),
                   in_channels=int(document.get("in_channels", 0)), num_train=int(document.get("num_train", 0)),
                   num_test=int(document.get("num_test", 0)), size_bytes=int(document.get("size_bytes", 0)),
                   created_at=_time(document.get("created_at")), raw=document,
                   test_split=document.get("test_split"))


SWEEP_ENDED = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class SweepJob:
    """One job of a sweep: a child (its grid `overrides`) or a shared teacher (`kind` 'teacher')."""

    id: str
    kind: str
    status: str
    stage: str | None
    fraction: float | None
    overrides: dict[str, Any] | None
    metrics: dict[str, Any] | None
    error_code: str | None

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> SweepJob:
        return cls(id=document["id"], kind=document.get("kind", "distill"), status=document["status"],
                   stage=document.get("stage"), fraction=document.get("fraction"),
                   overrides=document.get("overrides"), metrics=document.get("metrics"),
                   error_code=document.get("error_code"))


@dataclass(frozen=True)
class Sweep:
    """A sweep: its children and shared teachers (in full documents), and the leaderboard rows as sent."""

    id: str
    name: str
    status: str
    rank_by: str
    counts: dict[str, int]
    children: int
    jobs: list[SweepJob]
    teacher_jobs: list[SweepJob]
    leaderboard: list[dict[str, Any]]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.status in SWEEP_ENDED

    @property
    def done_children(self) -> int:
        return sum(count for status, count in self.counts.items() if status in TERMINAL_STATUSES)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Sweep:
        return cls(id=document["id"], name=document.get("name", ""), status=document["status"],
                   rank_by=document.get("rank_by", ""), counts=dict(document.get("counts") or {}),
                   children=int(document.get("children", 0)),
                   jobs=[SweepJob.from_json(job) for job in document.get("jobs") or []],
                   teacher_jobs=[SweepJob.from_json(job) for job in document.get("teacher_jobs") or []],
                   leaderboard=list(document.get("leaderboard") or []), raw=document)
