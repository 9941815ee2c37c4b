"""A job per CAM method through the real API and a real Celery worker: each succeeds and titles its panels.

One stack (API + one worker) serves the module: the nine jobs are posted at once and each
parametrised case waits for its own, so the processes start once. The jobs are tiny (digits at
16 px, 10 shots per class, one epoch each, a 3 % test split, two draws for the sampling CAMs).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from core.explain import get_explainer
from store.db import upgrade_database
from tests.e2e.checks import download
from tests.e2e.conftest import FAST_ENV, TERMINAL, Stack, _flush_redis, _redis_db_numbers, clean_env
from tests.worker.jobspecs import tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.redis]

METHODS = ("gradcam", "cam", "gradcampp", "smoothgradcampp", "scorecam", "sscam", "iscam", "xgradcam", "layercam")


def _spec(explainer: str) -> dict:
    spec = tiny_spec(name=f"cam-{explainer}", method=None, dataset={"test_fraction": 0.03})
    spec["loss"] = {"ce": 1.0, "kd": 1.0, "explanation": {
        "weight": 1.0, "explainer": explainer, "distance": "mse", "samples": 2, "batch": 512}}
    return spec


@pytest.fixture(scope="module")
def posted(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[tuple[Stack, dict[str, str]]]:
    """The module's stack, and the id of the job posted for each method."""
    home = tmp_path_factory.mktemp("cam-jobs")
    database_url = f"sqlite:///{home / 'distill.db'}"
    broker_url = redis_url.rsplit("/", 1)[0] + f"/{next(_redis_db_numbers) % 16}"
    _flush_redis(broker_url)
    upgrade_database(database_url)
    env = clean_env(DISTILL_HOME=str(home), DATABASE_URL=database_url, BROKER_URL=broker_url, **FAST_ENV)
    stack = Stack(home=home, database_url=database_url, broker_url=broker_url, env=env)
    try:
        stack.start()
        yield stack, {method: stack.post_job(_spec(method))["id"] for method in METHODS}
    finally:
        stack.close()


@pytest.mark.parametrize("method", METHODS)
def test_a_job_explained_by_each_cam_succeeds_with_panels_titled_by_its_method(
    posted: tuple[Stack, dict[str, str]], method: str, tmp_path: Path
) -> None:
    stack, ids = posted
    job = stack.wait_for_status(ids[method], TERMINAL, timeout_s=600)
    assert job["status"] == "succeeded", f"{job}\n{stack.logs()}"
    metrics = json.loads(download(stack.client, job, "metrics.json"))
    assert metrics["spec"]["loss"]["explanation"]["explainer"] == method
    assert "explanation" in metrics["history"]["student"][-1]["losses"]
    assert -1.0 <= metrics["explanation_cosine"] <= 1.0

    panel = Image.open(io.BytesIO(download(stack.client, job, "heatmaps/0000.png")))
    label = get_explainer(method).label
    expected = ["input", f"teacher {label}", f"student {label}"]
    if method != "gradcam":
        expected += ["teacher Grad-CAM", "student Grad-CAM"]
    assert panel.text["panels"].split(" | ") == expected
    assert panel.text["explainers"].split(", ")[0] == method
    assert f"explanation cosine ({label}, mean)" in download(stack.client, job, "report.html").decode()
    assert f"explanation cosine ({label})" in download(stack.client, job, "README.md").decode()  # the model card
