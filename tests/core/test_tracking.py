"""Tracking settings and what a job's history becomes in MLflow (the run itself: test_job_outputs)."""

from __future__ import annotations

from core.publish.tracking import DEFAULT_EXPERIMENT, TrackingConfig, epoch_metrics, flatten, tracking_from_env


def test_tracking_is_off_without_a_uri_and_reads_mlflows_own_variables() -> None:
    assert tracking_from_env({}) is None and tracking_from_env({"MLFLOW_TRACKING_URI": "  "}) is None
    config = tracking_from_env({"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"})
    assert config == TrackingConfig("http://127.0.0.1:5000", DEFAULT_EXPERIMENT)
    named = tracking_from_env({"MLFLOW_TRACKING_URI": "sqlite:///x.db", "MLFLOW_EXPERIMENT_NAME": "digits"})
    assert named is not None and named.experiment == "digits"


def test_history_becomes_metrics_per_stage_with_the_epoch_as_step() -> None:
    history = {"student": [{"epoch": 1, "loss": 2.0, "losses": {"ce": 1.5, "kd": 0.5}, "test_accuracy": 0.5},
                           {"epoch": 2, "loss": 1.0, "losses": {"ce": 0.8, "kd": 0.2}, "test_accuracy": 0.7}]}
    logged = set(epoch_metrics(history))
    assert ("student/loss", 2.0, 1) in logged and ("student/loss_kd", 0.2, 2) in logged
    assert ("student/test_accuracy", 0.7, 2) in logged and len(logged) == 8
    assert dict(flatten({"training": {"lr": 0.05}, "method": "kd"})) == {"training.lr": 0.05, "method": "kd"}
