"""`distill worker --gpus`: one child per GPU with its CUDA_VISIBLE_DEVICES, and a clear refusal without CUDA."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.worker.test_cli import _distill, _env
from worker.gpus import GpuChoiceError, gpu_child_envs, parse_gpus
from worker.supervisor import WorkerProcesses


def test_gpus_all_or_a_list_names_the_devices_and_refuses_what_the_host_lacks() -> None:
    assert parse_gpus("all", 4) == ["0", "1", "2", "3"]
    assert parse_gpus("0,1,3", 4) == ["0", "1", "3"]
    with pytest.raises(GpuChoiceError, match="GPU 5 does not exist"):
        parse_gpus("0,5", 4)
    with pytest.raises(GpuChoiceError, match="listed twice"):
        parse_gpus("1,1", 4)
    with pytest.raises(GpuChoiceError, match="no CUDA device"):
        parse_gpus("all", 0)


def test_one_child_per_listed_gpu_sees_only_its_device(tmp_path: Path) -> None:
    """The supervisor's real children (a stand-in command instead of celery) report their environment."""

    def report_env(index: int, _level: str) -> list[str]:
        code = (f"import os, pathlib, time; pathlib.Path({str(tmp_path)!r}, 'child{index}').write_text("
                "os.environ.get('CUDA_VISIBLE_DEVICES', '-') + ' ' + os.environ['MARK']); time.sleep(60)")
        return [sys.executable, "-c", code]

    workers = WorkerProcesses(3, {"MARK": "shared", "PATH": "/usr/bin:/bin"}, child_envs=gpu_child_envs(["0", "1", "3"]),
                              command=report_env, stop_timeout_s=5)
    workers.start()
    try:
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("child*"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        seen = {path.name: path.read_text() for path in tmp_path.glob("child*")}
    finally:
        workers.stop()
    assert seen == {"child0": "0 shared", "child1": "1 shared", "child2": "3 shared"}


def test_worker_with_gpus_on_a_host_without_cuda_refuses_clearly(tmp_path: Path) -> None:
    result = _distill("worker", "--gpus", "all", env=_env(DISTILL_HOME=str(tmp_path)), timeout_s=60)
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr and "--concurrency" in result.stderr
    assert "Traceback" not in result.stderr
