"""A job on an uploaded dataset: neither metrics.json, its resume identity nor the job row names a server folder."""

from __future__ import annotations

import json

import numpy as np

from core.resume import resume_digest
from core.spec import JobSpec
from store import repository
from store.db import Database
from store.models import DatasetRecord
from store.settings import Settings
from tests.worker.jobspecs import tiny_spec
from worker.runtime import WorkerRuntime
from worker.tasks import run_job


def test_metrics_of_an_uploaded_dataset_job_show_the_dataset_id_not_its_path(
    runtime: WorkerRuntime, worker_settings: Settings, database: Database, make_job, read_job
) -> None:
    folder = worker_settings.distill_home / "datasets" / "ds_upload1"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (40, 8, 8), dtype=np.uint8)
    np.savez(folder / "data.npz", x=x, y=np.arange(40) % 2, x_test=x[:10], y_test=np.arange(10) % 2)
    record = DatasetRecord(
        id="ds_upload1", name="blobs", kind="npz", num_classes=2, in_channels=1,
        class_names={"names": ["0", "1"]}, num_train=40, num_test=10,
        relpath="datasets/ds_upload1/data.npz", size_bytes=1,
    )  # fmt: skip
    with database.sessions() as session:
        repository.create_dataset(session, record)
    spec = tiny_spec(dataset={"name": None, "id": "ds_upload1", "image_size": 8, "shots_per_class": None})
    job = make_job(spec)

    assert run_job(job.id, runtime) == "succeeded"

    home = str(worker_settings.distill_home)
    metrics_file = worker_settings.jobs_dir / job.id / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    assert metrics["spec"]["dataset"]["id"] == "ds_upload1"
    assert metrics["spec"]["dataset"].get("path") is None
    assert home not in metrics_file.read_text()
    # The resume identity is the stored spec's: another worker, with another DISTILL_HOME, resumes this run.
    assert metrics["spec_sha256"] == resume_digest(JobSpec.model_validate(spec))
    finished = read_job(job.id)
    assert home not in json.dumps([finished.metrics, finished.spec, finished.progress])
