"""How jobs look in a terminal: tables, one-job summaries, the metrics block, ages and sizes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from client import Job

# metrics.json keys shown after a job, in this order, with how to print them.
SUMMARY_METRICS: tuple[tuple[str, str], ...] = (
    ("student_accuracy", "{:.4f}"), ("teacher_accuracy", "{:.4f}"), ("agreement", "{:.4f}"),
    ("explanation_cosine", "{:.4f}"), ("ece", "{:.4f}"), ("student_params", "{:,}"), ("teacher_params", "{:,}"),
    ("compression_ratio", "{:.2f}x"), ("student_latency_ms", "{:.3f} ms"), ("teacher_latency_ms", "{:.3f} ms"),
)


def age(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return "-"
    now = now or datetime.now(timezone.utc)
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def size(size_bytes: int) -> str:
    value = float(size_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart; the header underlined with dashes."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in (headers, ["-" * width for width in widths], *rows)]
    return "\n".join(lines)


def _number(value: Any, pattern: str = "{:.3f}") -> str:
    return pattern.format(value) if isinstance(value, (int, float)) else "-"


def percent(job: Job) -> str:
    if job.status == "succeeded":
        return "100%"
    return f"{job.progress.fraction:.0%}" if job.progress else "-"


def jobs_table(jobs: Sequence[Job]) -> str:
    headers = ("ID", "STATUS", "STAGE", "PROGRESS", "METHOD", "STUDENT<-TEACHER", "ACC", "EXPL.COS", "AGE", "NAME")
    rows = []
    for job in jobs:
        metrics = job.metrics or {}
        spec = job.spec
        pair = f"{spec.get('student', {}).get('arch', '?')}<-{spec.get('teacher', {}).get('arch', '?')}"
        rows.append((job.id, job.status, job.stage or "-", percent(job), str(spec.get("method") or "-"), pair,
                     _number(metrics.get("student_accuracy")), _number(metrics.get("explanation_cosine")),
                     age(job.created_at), job.name))
    return table(headers, rows)


def metrics_block(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "  (no metrics)"
    lines = []
    for key, pattern in SUMMARY_METRICS:
        if key in metrics and isinstance(metrics[key], (int, float)):
            lines.append(f"  {key:<20} {pattern.format(metrics[key])}")
    return "\n".join(lines)


def job_summary(job: Job) -> str:
    """`distill show`: everything a person asks about one job, without the raw spec."""
    spec = job.spec
    lines = [
        f"job       {job.id}  ({job.name})",
        f"status    {job.status}" + (f"  stage {job.stage}" if job.stage else ""),
        f"method    {spec.get('method') or '-'}: {spec.get('student', {}).get('arch', '?')} student <- "
        f"{spec.get('teacher', {}).get('arch', '?')} teacher on {_dataset(spec)}",
        f"created   {job.created_at:%Y-%m-%d %H:%M:%S} UTC ({age(job.created_at)} ago), attempts {job.attempts}"
        if job.created_at else "created   -",
    ]
    if job.progress and not job.finished:
        p = job.progress
        lines.append(f"progress  {p.fraction:.0%}  epoch {p.epoch}/{p.total_epochs}  step {p.step}/{p.total_steps}"
                     + "".join(f"  {k} {_number(v, '{:.4f}')}" for k, v in p.metrics.items()))
    if job.error:
        lines.append(f"error     {job.error.code}: {job.error.message}"
                     + (f" (in {job.error.where})" if job.error.where else ""))
    if job.metrics:
        lines += ["metrics", metrics_block(job.metrics)]
    if job.artifacts:
        lines.append(f"artifacts ({len(job.artifacts)})")
        lines += artifact_lines(job)
    return "\n".join(lines)


def artifact_lines(job: Job) -> list[str]:
    """One line per artifact, except the per-image heatmaps, which fold into one line."""
    per_image = [a for a in job.artifacts if a.name.startswith("heatmaps/") and a.name != "heatmaps/grid.png"]
    lines = [f"  {a.name:<30} {size(a.size_bytes):>10}" for a in job.artifacts if a not in per_image]
    if per_image:
        names = sorted(a.name for a in per_image)
        label = f"{names[0]} .. {names[-1].removeprefix('heatmaps/')}" if len(names) > 1 else names[0]
        lines.append(f"  {label:<30} {size(sum(a.size_bytes for a in per_image)):>10}  ({len(names)} images)")
    return lines


def _dataset(spec: dict[str, Any]) -> str:
    dataset = spec.get("dataset", {})
    return str(dataset.get("name") or dataset.get("id") or dataset.get("path") or "?")
