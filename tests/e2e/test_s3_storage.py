"""Workers on several "machines" (each its own DISTILL_HOME) sharing only a real S3 server (moto_server).

The whole job path runs through the bucket: the uploaded teacher, the checkpoints a killed
worker left, the resumed run on another machine, the artifacts the API streams back.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.checks import assert_downloads_reproduce_metrics
from tests.e2e.conftest import TERMINAL, Stack, wait_until
from tests.services import S3Server
from tests.worker.jobspecs import tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.redis]

STUDENT_EPOCHS = 4


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_worker_on_another_machine_resumes_from_checkpoints_in_the_bucket(
    sqlite_url: str, stacks: Callable[..., Stack], s3_env: dict[str, str], s3: S3Server, tmp_path: Path
) -> None:
    stack = stacks(sqlite_url, **s3_env)
    bucket, prefix = s3_env["DISTILL_STORAGE_URL"][len("s3://"):].split("/", 1)
    machine_a, machine_b = tmp_path / "machine-a", tmp_path / "machine-b"
    stack.start_api(wait=False)
    first = stack.start_worker(home=machine_a)
    wait_until(stack._api_up, 90, "the API")
    job_id = stack.post_job(tiny_spec(teacher_epochs=1, student_epochs=STUDENT_EPOCHS, shots_per_class=20))["id"]

    wait_until(
        lambda: (job := stack.get_job(job_id))["stage"] == "distilling" and (job["progress"] or {}).get("epoch", 0) >= 2,
        180, "the second distillation epoch", interval_s=0.05,
    )  # fmt: skip
    first.stop(signal.SIGKILL)
    objects = {item["Key"] for item in s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert f"{prefix}/jobs/{job_id}/checkpoints/distilling.pt" in objects  # pushed at the epoch's end
    assert f"{prefix}/jobs/{job_id}/teacher.safetensors" in objects

    second = stack.start_worker(home=machine_b)  # a machine that never saw this job
    final = stack.wait_for_status(job_id, TERMINAL, timeout_s=180)

    assert final["status"] == "succeeded", f"{final}\n{stack.logs()}"
    assert final["attempts"] >= 2  # one more when a loaded machine lets a heartbeat go stale
    resumed_log = second.log()
    assert "fetched" in resumed_log and "training_teacher epoch" not in resumed_log
    assert "distilling: resuming after epoch" in resumed_log
    metrics = assert_downloads_reproduce_metrics(stack.client, final, tmp_path / "download")  # streamed from S3
    assert [entry["epoch"] for entry in metrics["history"]["student"]] == list(range(0, STUDENT_EPOCHS + 1))

    objects = {item["Key"] for item in s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])}
    job_keys = {key.split(f"jobs/{job_id}/", 1)[1] for key in objects if f"jobs/{job_id}/" in key}
    assert {"student.safetensors", "metrics.json", "teacher.safetensors"} <= job_keys
    assert not any(key.startswith("checkpoints/") for key in job_keys)  # the finished run needs none
    assert not [name for name in _files_under(machine_b / "cache") if job_id in name]  # nothing kept on disk
    assert not (stack.home / "jobs" / job_id).exists()  # nor on the API's
