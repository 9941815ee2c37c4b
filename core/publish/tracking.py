"""Experiment tracking: each finished job becomes one MLflow run (when a tracking URI is set).

The run holds the spec as params, every stage's per-epoch history as metrics with the
epoch as step, the final metrics, and the artifacts (student, ONNX, report, model card,
metrics.json, heatmaps). Logging happens once, after the job's own files are written,
so a resumed job logs one run, and tracking can never change what the job produced.
Tracking is a side channel: a server that is down or refuses us is a warning on the
job, never a failure. `mlflow` (mlflow-skinny) is an optional dependency, imported here
only when tracking is on.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from core.publish.manifest import HEATMAP_FOLDER, TRACKED_FILES
from core.redact import exception_text

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "distill"
CONNECT_TIMEOUT_S = 3.0
# MLflow's HTTP client retries for minutes by default; a job should not wait that long on a side channel.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
FINAL_METRICS = (
    "student_accuracy", "teacher_accuracy", "agreement", "explanation_cosine", "ece", "teacher_ece",
    "student_params", "teacher_params", "compression_ratio", "size_compression_ratio",
    "student_latency_ms", "teacher_latency_ms",
)
MAX_PARAM_CHARS = 500


@dataclass(frozen=True)
class TrackingConfig:
    """Where to log: the service passes its settings, the CLI reads the environment."""

    uri: str
    experiment: str = DEFAULT_EXPERIMENT
    tags: dict[str, str] = field(default_factory=dict)


def tracking_from_env(environ: dict[str, str] | None = None) -> TrackingConfig | None:
    """`MLFLOW_TRACKING_URI` (and optionally `MLFLOW_EXPERIMENT_NAME`), as MLflow itself reads them."""
    environ = dict(os.environ) if environ is None else environ
    uri = environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        return None
    return TrackingConfig(uri, environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT)


def flatten(document: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """`{"training": {"lr": 0.05}}` -> `("training.lr", 0.05)`."""
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


def epoch_metrics(history: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, float, int]]:
    """(`<stage>/<key>`, value, epoch) for every number of every history entry; losses by term too."""
    for stage, entries in history.items():
        for entry in entries:
            step = int(entry.get("epoch", 0))
            for key, value in entry.items():
                if key == "epoch":
                    continue
                if key == "losses" and isinstance(value, dict):
                    for term, term_value in value.items():
                        yield f"{stage}/loss_{term}", float(term_value), step
                elif isinstance(value, int | float) and math.isfinite(value):
                    yield f"{stage}/{key}", float(value), step


def _reachable(uri: str) -> str | None:
    """For an http(s) server, None when a TCP connection opens, else why not (no credentials in it)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"cannot connect to the tracking server at {parts.hostname}:{port} ({exc.strerror or exc})"


def track_job(config: TrackingConfig, out_dir: Path, result: dict[str, Any]) -> tuple[str | None, list[dict[str, str]]]:
    """Log the finished job as one MLflow run; returns (run id, warnings). Never raises."""
    problem = _reachable(config.uri)
    if problem is not None:
        log.warning("experiment tracking skipped: %s", problem)
        return None, [{"code": "tracking_failed", "message": f"MLflow run not logged: {problem}"}]
    try:
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        run_id = _log_run(config, out_dir, result)
    except ImportError:
        message = "MLFLOW_TRACKING_URI is set but mlflow is not installed (pip install 'distill-service[mlflow]')"
        log.warning("experiment tracking skipped: %s", message)
        return None, [{"code": "tracking_failed", "message": message}]
    except Exception as exc:  # noqa: BLE001 - tracking must never fail the job
        reason = f"{type(exc).__name__}: {exception_text(exc)}"[:300]  # the warning is served: no server path
        log.warning("experiment tracking failed: %s", reason)
        return None, [{"code": "tracking_failed", "message": f"MLflow run not logged: {reason}"}]
    log.info("logged MLflow run %s in experiment %r", run_id, config.experiment)
    return run_id, []


def _log_run(config: TrackingConfig, out_dir: Path, result: dict[str, Any]) -> str:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=config.uri)
    experiment = client.get_experiment_by_name(config.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.experiment)
    spec = result.get("spec", {})
    tags = {"distill.method": str(result.get("method")), "distill.spec_sha256": str(result.get("spec_sha256")),
            **config.tags}
    run = client.create_run(experiment_id, run_name=str(spec.get("name", "job")), tags=tags)
    run_id = run.info.run_id
    try:
        params = [Param(key, str(value)[:MAX_PARAM_CHARS]) for key, value in flatten(spec)]
        for start in range(0, len(params), 100):
            client.log_batch(run_id, params=params[start : start + 100])
        now_ms = int(time.time() * 1000)
        metrics = [Metric(key, value, now_ms, step) for key, value, step in epoch_metrics(result.get("history", {}))]
        metrics += [Metric(key, float(result[key]), now_ms, 0) for key in FINAL_METRICS
                    if isinstance(result.get(key), int | float) and math.isfinite(result[key])]
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start : start + 1000])
        for name in TRACKED_FILES:
            if (out_dir / name).is_file():
                client.log_artifact(run_id, str(out_dir / name))
        if (out_dir / HEATMAP_FOLDER).is_dir():
            client.log_artifacts(run_id, str(out_dir / HEATMAP_FOLDER), artifact_path=HEATMAP_FOLDER)
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id
