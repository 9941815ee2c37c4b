"""Jobs on datasets that stay in a bucket (a real moto S3 server), run by worker.tasks.run_job."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from store import repository
from store.db import Database
from store.models import Job
from store.settings import Settings
from tests.bucket_data import photos, put_image_folder, shards, zipped
from tests.services import S3Server
from tests.worker.jobspecs import tiny_spec
from worker.runtime import WorkerRuntime
from worker.tasks import run_job


@pytest.fixture
def api(worker_settings: Settings, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    for name, value in s3.environment().items():
        monkeypatch.setenv(name, value)
    with TestClient(create_app(worker_settings)) as client:
        yield client


def _spec(dataset_id: str) -> dict:
    return tiny_spec(dataset={"name": None, "id": dataset_id, "image_size": 16, "shots_per_class": None},
                     teacher={"epochs": 2}, student={"arch": "cnn"})


def _run(dataset_id: str, runtime: WorkerRuntime, make_job: Callable[..., Job],
         read_job: Callable[[str], Job]) -> Job:
    job = make_job(_spec(dataset_id))
    run_job(job.id, runtime)
    return read_job(job.id)


def test_jobs_on_a_prefix_and_on_shards_score_as_the_same_images_uploaded_as_a_zip(
    api: TestClient, s3: S3Server, runtime: WorkerRuntime, make_job: Callable[..., Job],
    read_job: Callable[[str], Job],
) -> None:
    files, bucket, client = photos(), s3.create_bucket("team"), s3.client()
    put_image_folder(client, bucket, "folder/", files)
    for key, data in shards(files).items():
        client.put_object(Bucket=bucket, Key=f"wds/{key}", Body=data)
    ids = {
        "zip": api.post("/v1/datasets", files={"file": ("p.zip", zipped(files))}).json()["id"],
        "prefix": api.post("/v1/datasets", json={"uri": f"s3://{bucket}/folder/"}).json()["id"],
        "shards": api.post("/v1/datasets", json={"uri": f"s3://{bucket}/wds/"}).json()["id"],
    }
    jobs = {kind: _run(dataset_id, runtime, make_job, read_job) for kind, dataset_id in ids.items()}
    for kind, job in jobs.items():
        assert job.status == "succeeded", (kind, job.error_message)
    scores = {kind: (job.metrics["student_accuracy"], job.metrics["teacher_accuracy"]) for kind, job in jobs.items()}
    assert scores["prefix"] == scores["zip"] == scores["shards"], scores
    losses = {kind: job.metrics["history"]["student"][-1]["loss"] for kind, job in jobs.items()}
    assert losses["prefix"] == losses["zip"] == losses["shards"], losses  # the same pixels in the same order


def test_a_bucket_that_vanishes_fails_the_job_and_the_dataset_record_survives(
    api: TestClient, s3: S3Server, runtime: WorkerRuntime, database: Database, make_job: Callable[..., Job],
    read_job: Callable[[str], Job],
) -> None:
    bucket, client = s3.create_bucket("gone"), s3.client()
    put_image_folder(client, bucket, "p/", photos())
    dataset_id = api.post("/v1/datasets", json={"uri": f"s3://{bucket}/p/"}).json()["id"]
    for item in client.list_objects_v2(Bucket=bucket)["Contents"]:
        client.delete_object(Bucket=bucket, Key=item["Key"])
    client.delete_bucket(Bucket=bucket)

    failed = _run(dataset_id, runtime, make_job, read_job)
    assert failed.status == "failed"
    assert (failed.error_code, failed.error_field) == ("invalid_dataset", "dataset.id")
    assert "cannot read the bucket" in failed.error_message and "NoSuchBucket" in failed.error_message
    with database.sessions() as session:
        assert repository.get_dataset(session, dataset_id).num_train == 32
