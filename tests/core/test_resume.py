"""An interrupted run, rerun with the same out folder, ends exactly where an uninterrupted one does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from core.train.callbacks import NullCallbacks, Progress
from core.errors import JobCancelled
from core.run import run_job
from core.spec import JobSpec


class InterruptAfterEpoch(NullCallbacks):
    """Asks to stop as soon as `stage` has finished `epoch` epochs (the next step does not run)."""

    def __init__(self, stage: str, epoch: int) -> None:
        self.stage, self.epoch = stage, epoch
        self.stages: list[str] = []
        self.stop = False

    def on_stage(self, stage: str) -> None:
        self.stages.append(stage)

    def on_progress(self, progress: Progress) -> None:
        if progress.stage == self.stage and progress.epoch == self.epoch and progress.step == progress.total_steps:
            self.stop = True

    def should_cancel(self) -> bool:
        return self.stop


class Stages(NullCallbacks):
    def __init__(self) -> None:
        self.stages: list[str] = []

    def on_stage(self, stage: str) -> None:
        self.stages.append(stage)


def _spec(method: str, loss: dict[str, Any]) -> JobSpec:
    return JobSpec.model_validate({
        "name": f"resume-{method}",
        "dataset": {"name": "digits", "image_size": 16, "shots_per_class": 15},
        "teacher": {"arch": "cnn", "epochs": 3},
        "student": {"arch": "resnet8"},
        "method": method,
        "loss": loss,
        "training": {"epochs": 3, "batch_size": 32, "seed": 3},
        "report": {"heatmaps": 1, "latency_runs": 1},
        "export": {"onnx": False},
    })


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "loss", "stage", "skipped"),
    [
        # the teacher-map cache and the FitNet regressor are part of what must resume
        ("e2kd", {"fitnet": 1.0}, "distilling", ["training_teacher"]),
        ("xdistill", {"xdistill": {"epochs": 3}}, "fitting_explainer", ["training_teacher"]),
        ("oracle", {}, "training_teacher", []),
    ],
)
def test_interrupted_run_resumes_to_bit_identical_weights(
    tmp_path: Path, method: str, loss: dict, stage: str, skipped: list[str]
) -> None:
    spec = _spec(method, loss)
    straight = run_job(spec, tmp_path / "straight")

    interrupted = tmp_path / "interrupted"
    with pytest.raises(JobCancelled):
        run_job(spec, interrupted, InterruptAfterEpoch(stage, epoch=1))
    checkpoint = torch.load(interrupted / "checkpoints" / f"{stage}.pt", weights_only=True)
    assert checkpoint["epoch"] == 1

    rerun = Stages()
    resumed = run_job(spec, interrupted, rerun)
    assert stage in rerun.stages and not set(skipped) & set(rerun.stages)  # finished stages are not redone

    for name in ("student.safetensors", "teacher.safetensors"):
        expected, actual = _weights(tmp_path / "straight" / name), _weights(interrupted / name)
        assert expected.keys() == actual.keys()
        for key in expected:
            assert torch.equal(expected[key], actual[key]), f"{name}:{key}"
    for key in ("student_accuracy", "teacher_accuracy", "agreement", "explanation_cosine", "ece"):
        assert resumed[key] == straight[key], key
    assert resumed["history"]["student"] != [] and [e["losses"] for e in resumed["history"]["student"]] == [
        e["losses"] for e in straight["history"]["student"]
    ]
