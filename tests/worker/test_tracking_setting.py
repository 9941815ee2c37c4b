"""The service's MLflow setting (MLFLOW_TRACKING_URI in the shared Settings) reaches the engine per job."""

from __future__ import annotations

from core.publish.tracking import TrackingConfig
from store.settings import Settings
from worker.tasks import _tracking


def test_the_service_setting_tags_each_run_with_its_job_id() -> None:
    assert _tracking(Settings(MLFLOW_TRACKING_URI=""), "job_1") is None
    config = _tracking(Settings(MLFLOW_TRACKING_URI="sqlite:///m.db", MLFLOW_EXPERIMENT_NAME="prod"), "job_1")
    assert config == TrackingConfig("sqlite:///m.db", "prod", {"distill.job_id": "job_1"})
