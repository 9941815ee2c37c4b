"""Request and response bodies of /v1/sweeps."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.routes import API_V1
from api.schemas import as_utc
from core.spec.sweep import LEADERBOARD_METRICS, leaderboard
from store.models import Job, JobKind, JobStatus, Sweep
from store.sweeps import sweep_status

RankBy = Literal["student_accuracy", "agreement", "explanation_cosine", "ece", "latency_ms"]
SweepStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
_CHILD_METRICS = tuple(source for source, _ in LEADERBOARD_METRICS.values()) + ("teacher_accuracy",)

_SWEEP_EXAMPLE: dict[str, Any] = {
    "name": "digits-methods",
    "base": {"name": "digits", "dataset": {"name": "digits", "image_size": 16, "shots_per_class": 50},
             "teacher": {"arch": "resnet20", "epochs": 5}, "student": {"arch": "resnet8"},
             "training": {"epochs": 5}},
    "grid": {"method": ["kd", "e2kd"], "loss.explanation.weight": [1, 5], "training.seed": [0, 1, 2]},
    "rank_by": "student_accuracy",
}


_TIME = "2026-01-01T12:00:00Z"
_LINKS = {"events": "/v1/sweeps/swp_5f0c2a9d3e1b4c7a/events",
          "leaderboard_csv": "/v1/sweeps/swp_5f0c2a9d3e1b4c7a/leaderboard.csv",
          "report": "/v1/sweeps/swp_5f0c2a9d3e1b4c7a/report"}
_SUMMARY_EXAMPLE: dict[str, Any] = {
    "id": "swp_5f0c2a9d3e1b4c7a", "name": "digits-methods", "status": "running", "rank_by": "student_accuracy",
    "created_at": _TIME, "counts": {"succeeded": 2, "running": 1, "queued": 1}, "children": 4, "links": _LINKS,
}
_STATS = {"mean": 0.9412, "std": 0.0141}
_OUT_EXAMPLE: dict[str, Any] = {
    **_SUMMARY_EXAMPLE,
    "grid": {"method": ["kd", "e2kd"], "training.seed": [0, 1]},
    "teacher_jobs": [{"id": "job_0a1b2c3d4e5f6a7b", "kind": "teacher", "status": "succeeded", "stage": None,
                      "fraction": None, "overrides": None, "metrics": {"teacher_accuracy": 0.97},
                      "error_code": None, "url": "/v1/jobs/job_0a1b2c3d4e5f6a7b"}],
    "jobs": [{"id": "job_1a1b2c3d4e5f6a7b", "kind": "distill", "status": "succeeded", "stage": None,
              "fraction": None, "overrides": {"method": "e2kd", "training.seed": 0},
              "metrics": {"student_accuracy": 0.95}, "error_code": None, "url": "/v1/jobs/job_1a1b2c3d4e5f6a7b"}],
    "leaderboard": [{"rank": 1, "config": {"method": "e2kd"}, "seeds": [0, 1], "runs": 2, "finished": 2,
                     "metrics": {"student_accuracy": _STATS, "agreement": _STATS, "explanation_cosine": _STATS,
                                 "ece": {"mean": 0.04, "std": 0.01}, "latency_ms": {"mean": 1.2, "std": 0.1}}}],
}
LEADERBOARD_CSV_EXAMPLE = (
    "rank,config,seeds,runs,finished,student_accuracy_mean,student_accuracy_std,...\n"
    '1,"{""method"": ""e2kd""}",0 1,2,2,0.9412,0.0141,...\n'
)


class SweepRequest(BaseModel):
    """A base job spec and a grid of dotted-path overrides: one child job per combination."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_SWEEP_EXAMPLE]})

    name: str | None = Field(None, min_length=1, max_length=200, description="Default: the base spec's name.")
    base: dict[str, Any] = Field(description="A job spec (the body of POST /v1/jobs) that every child starts from.")
    grid: dict[str, list[Any]] = Field(
        description="Dotted spec path -> values, e.g. {'method': ['kd', 'e2kd'], 'training.seed': [0, 1]}."
    )
    rank_by: RankBy = Field("student_accuracy", description="Leaderboard order (mean over seeds).")


class SweepJobOut(BaseModel):
    id: str
    kind: str
    status: JobStatus
    stage: str | None = None
    fraction: float | None = Field(None, description="The job's progress in [0, 1] while it runs.")
    overrides: dict[str, Any] | None = Field(None, description="The grid values of this child (null for a teacher).")
    metrics: dict[str, Any] | None = Field(None, description="Headline metrics once it succeeded.")
    error_code: str | None = None
    url: str

    @classmethod
    def from_job(cls, job: Job) -> SweepJobOut:
        metrics = None
        if job.metrics:
            metrics = {key: job.metrics[key] for key in _CHILD_METRICS if key in job.metrics}
        fraction = (job.progress or {}).get("fraction") if job.status == JobStatus.running.value else None
        return cls(id=job.id, kind=job.kind, status=JobStatus(job.status), stage=job.stage, fraction=fraction,
                   overrides=job.overrides, metrics=metrics, error_code=job.error_code,
                   url=f"{API_V1}/jobs/{job.id}")


class MetricStats(BaseModel):
    mean: float | None
    std: float | None = Field(description="Sample standard deviation over seeds (0 for one seed).")


class LeaderboardRow(BaseModel):
    rank: int
    config: dict[str, Any] = Field(description="The grid values this row stands for, training.seed left out.")
    seeds: list[Any] = Field(description="Seeds of the finished children averaged here.")
    runs: int
    finished: int
    metrics: dict[str, MetricStats]


class SweepLinks(BaseModel):
    events: str
    leaderboard_csv: str
    report: str


def _links(sweep_id: str) -> SweepLinks:
    base = f"{API_V1}/sweeps/{sweep_id}"
    return SweepLinks(events=f"{base}/events", leaderboard_csv=f"{base}/leaderboard.csv", report=f"{base}/report")


class SweepSummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_SUMMARY_EXAMPLE]})

    id: str
    name: str
    status: SweepStatus
    rank_by: str
    created_at: datetime
    counts: dict[str, int] = Field(description="Children per status (teacher jobs not counted).")
    children: int
    links: SweepLinks

    @classmethod
    def from_sweep(cls, sweep: Sweep) -> SweepSummary:
        children = [job for job in sweep.jobs if job.kind != JobKind.teacher.value]
        return cls(id=sweep.id, name=sweep.name, status=sweep_status(sweep.jobs), rank_by=sweep.rank_by,  # type: ignore[arg-type]
                   created_at=as_utc(sweep.created_at), counts=dict(Counter(job.status for job in children)),
                   children=len(children), links=_links(sweep.id))


class SweepOut(SweepSummary):
    model_config = ConfigDict(json_schema_extra={"examples": [_OUT_EXAMPLE]})

    grid: dict[str, list[Any]]
    teacher_jobs: list[SweepJobOut] = Field(description="Teachers trained once and shared by the children.")
    jobs: list[SweepJobOut] = Field(description="The children, in grid order.")
    leaderboard: list[LeaderboardRow]

    @classmethod
    def from_sweep(cls, sweep: Sweep) -> SweepOut:
        summary = SweepSummary.from_sweep(sweep)
        children = [job for job in sweep.jobs if job.kind != JobKind.teacher.value]
        teachers = [job for job in sweep.jobs if job.kind == JobKind.teacher.value]
        return cls(
            **summary.model_dump(), grid=sweep.request.get("grid", {}),
            teacher_jobs=[SweepJobOut.from_job(job) for job in teachers],
            jobs=[SweepJobOut.from_job(job) for job in children],
            leaderboard=[LeaderboardRow.model_validate(row) for row in sweep_leaderboard(sweep)],
        )


def sweep_leaderboard(sweep: Sweep) -> list[dict[str, Any]]:
    children = [job for job in sweep.jobs if job.kind != JobKind.teacher.value]
    finished = JobStatus.succeeded.value
    return leaderboard([(job.overrides or {}, job.metrics if job.status == finished else None) for job in children],
                       sweep.rank_by)


class SweepPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_SUMMARY_EXAMPLE], "next_cursor": None}]})

    items: list[SweepSummary]
    next_cursor: str | None = None
