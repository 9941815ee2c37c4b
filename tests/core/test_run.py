"""Whole jobs on digits, one per method preset, resuming and refusing a folder, and the progress output."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from core.train.callbacks import NullCallbacks, Progress
from core.errors import JobCancelled, SpecError
from core.models import build_model, save_weights
from core.train.progress import LogCallbacks, TqdmCallbacks, terminal_callbacks
from core.resume import resume_digest
from core.run import run_distillation
from core.spec import JobSpec

METRIC_KEYS = {
    "student_accuracy", "teacher_accuracy", "agreement", "explanation_cosine", "ece", "student_params",
    "teacher_params", "student_latency_ms", "teacher_latency_ms", "compression_ratio", "history", "seconds",
}


def tiny_spec(method: str | None = "kd", **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": f"test-{method}",
        "dataset": {"name": "digits", "image_size": 16, "shots_per_class": 20},
        "teacher": {"arch": "cnn", "epochs": 4},
        "student": {"arch": "resnet8"},
        "method": method,
        "training": {"epochs": 2, "batch_size": 32, "lr": 0.05, "seed": 0},
        "report": {"heatmaps": 2, "latency_runs": 2},
        "export": {"onnx": False},  # export has its own tests (test_export, test_job_outputs)
    }
    for key, value in overrides.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and key in spec else value
    return spec


class StageRecorder(NullCallbacks):
    def __init__(self, cancel_after_steps: int | None = None) -> None:
        self.stages: list[str] = []
        self.steps = 0
        self.cancel_after_steps = cancel_after_steps

    def on_stage(self, stage: str) -> None:
        self.stages.append(stage)

    def on_progress(self, progress: Progress) -> None:
        if progress.step and "test_accuracy" not in progress.metrics:
            self.steps += 1

    def should_cancel(self) -> bool:
        return self.cancel_after_steps is not None and self.steps >= self.cancel_after_steps


PRESET_TERMS = {
    "scratch": {"ce"},
    "kd": {"ce", "kd"},
    "e2kd": {"ce", "kd", "explanation"},
    "xai-mse": {"ce", "kd", "explanation"},
    "oracle": {"ce", "kd"},
    "xdistill": {"ce", "kd", "explanation"},
    "at": {"ce", "at"},
    "fitnet": {"ce", "fitnet"},
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "loss", "terms"),
    [(method, {}, terms) for method, terms in PRESET_TERMS.items()]
    + [("oracle", {"explanation": {"weight": 1.0}, "at": 1000.0}, {"ce", "kd", "explanation", "at"})],
    ids=[*PRESET_TERMS, "oracle+e2kd+at"],
)
def test_each_preset_runs_end_to_end_and_writes_every_artifact(
    tmp_path: Path, method: str, loss: dict, terms: set[str]
) -> None:
    spec = JobSpec.model_validate({**tiny_spec(method), "loss": loss})
    recorder = StageRecorder()
    result = run_distillation(spec, tmp_path, recorder)

    for name in ("student.safetensors", "teacher.safetensors", "metrics.json", "heatmaps/grid.png",
                 "heatmaps/0000.png", "heatmaps/0001.png"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "checkpoints").exists()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result))
    assert METRIC_KEYS <= set(metrics)
    for key in ("student_accuracy", "teacher_accuracy", "agreement", "ece"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["teacher_accuracy"] > 0.3  # 10 classes: well above chance
    assert -1.0 <= metrics["explanation_cosine"] <= 1.0
    assert metrics["student_params"] > 0 and metrics["teacher_params"] > 0
    assert set(metrics["loss_terms"]) == terms and metrics["method"] == method
    assert len(metrics["history"]["teacher"]) == 4 and len(metrics["history"]["student"]) == 3  # epoch 0, 1, 2
    assert set(metrics["history"]["student"][-1]["losses"]) == terms
    assert all(key in metrics["seconds"] for key in ("preparing_data", "training_teacher", "distilling", "evaluating"))
    expected_stages = ["preparing_data", "training_teacher", "distilling", "evaluating", "rendering"]
    if method == "xdistill":
        expected_stages.insert(2, "fitting_explainer")
        assert metrics["history"]["explainer"][-1]["test_map_mse"] >= 0.0
    assert recorder.stages == expected_stages
    student = build_model("resnet8", 10, 1)
    student.load_state_dict(load_file(str(tmp_path / "student.safetensors")))  # the export is a plain student


def test_a_finished_run_is_not_redone(tmp_path: Path) -> None:
    spec = JobSpec.model_validate(tiny_spec("kd", teacher={"epochs": 1}, training={"epochs": 1}))
    first = run_distillation(spec, tmp_path)
    recorder = StageRecorder()
    again = run_distillation(spec, tmp_path, recorder)
    assert recorder.stages == [] and again == json.loads(json.dumps(first))


def test_an_out_folder_refuses_a_different_spec(tmp_path: Path) -> None:
    spec = JobSpec.model_validate(tiny_spec("kd", teacher={"epochs": 1}, training={"epochs": 1}))
    with pytest.raises(JobCancelled):
        run_distillation(spec, tmp_path, StageRecorder(cancel_after_steps=1))
    other = JobSpec.model_validate(tiny_spec("kd", teacher={"epochs": 1}, training={"epochs": 1, "seed": 1}))
    assert resume_digest(other) != resume_digest(spec)
    with pytest.raises(SpecError, match="different spec"):
        run_distillation(other, tmp_path)


def test_cancelling_mid_distillation_raises_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    spec = JobSpec.model_validate(tiny_spec("e2kd", teacher={"epochs": 1}, training={"epochs": 3}))
    steps_per_epoch = 7  # 200 images, batch 32
    recorder = StageRecorder(cancel_after_steps=steps_per_epoch + steps_per_epoch + 2)  # teacher + 1 epoch + 2 steps
    with pytest.raises(JobCancelled):
        run_distillation(spec, tmp_path, recorder)
    assert recorder.stages[-1] == "distilling"
    checkpoint = torch.load(tmp_path / "checkpoints" / "distilling.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert (tmp_path / "teacher.safetensors").is_file() and not (tmp_path / "student.safetensors").exists()


def test_given_teacher_weights_are_used_and_not_retrained(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = build_model("cnn", 10, 1)
    save_weights(teacher, tmp_path / "given.safetensors")
    spec = JobSpec.model_validate(
        tiny_spec("kd", teacher={"weights": str(tmp_path / "given.safetensors"), "epochs": 0}, training={"epochs": 1})
    )
    recorder = StageRecorder()
    result = run_distillation(spec, tmp_path / "out", recorder)
    assert "training_teacher" not in recorder.stages and result["history"]["teacher"] == []
    assert not (tmp_path / "out" / "teacher.safetensors").exists()
    assert result["teacher_params"] == sum(p.numel() for p in teacher.parameters())


@pytest.mark.parametrize(("classes", "channels", "message"), [(5, 1, "5 classes"), (10, 3, "3-channel")])
def test_teacher_weights_for_another_dataset_are_a_spec_error_naming_the_field(
    tmp_path: Path, classes: int, channels: int, message: str
) -> None:
    save_weights(build_model("cnn", classes, channels), tmp_path / "wrong.safetensors")
    spec = JobSpec.model_validate(tiny_spec("kd", teacher={"weights": str(tmp_path / "wrong.safetensors")}))
    with pytest.raises(SpecError, match=message) as caught:
        run_distillation(spec, tmp_path / "out")
    assert caught.value.field == "teacher.weights"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _epoch_end(stage: str = "distilling") -> Progress:
    return Progress(stage, 1, 2, 7, 7, 0.5, {"loss": 0.25, "train_accuracy": 0.5, "test_accuracy": 0.75})


def test_terminal_callbacks_draw_a_bar_on_a_tty_and_log_lines_otherwise(caplog: pytest.LogCaptureFixture) -> None:
    terminal = FakeTerminal()
    bar = terminal_callbacks(terminal)
    assert isinstance(bar, TqdmCallbacks)
    bar.on_stage("training_teacher")
    bar.on_progress(Progress("training_teacher", 1, 2, 0, 7, 0.1))  # resumed after one epoch
    assert "7/14" in terminal.getvalue()
    bar.on_stage("distilling")
    bar.on_progress(Progress("distilling", 1, 2, 3, 7, 0.2, {"loss": 1.5}))
    assert "3/14" in terminal.getvalue()
    bar.on_progress(_epoch_end())
    bar.close()
    drawn = terminal.getvalue()
    assert "distilling" in drawn and "loss=0.2500" in drawn and "test_acc=0.750" in drawn and "epoch=1/2" in drawn

    plain = terminal_callbacks(io.StringIO())
    assert isinstance(plain, LogCallbacks) and not plain.should_cancel()
    with caplog.at_level(logging.INFO, logger="core.train.progress"):
        plain.on_progress(Progress("distilling", 1, 2, 3, 7, 0.2, {"loss": 1.5}))  # a step: no line
        plain.on_progress(_epoch_end())
    assert len(caplog.records) == 1
    assert "distilling epoch 1/2" in caplog.records[0].getMessage()
    assert "test_accuracy 0.7500" in caplog.records[0].getMessage()
