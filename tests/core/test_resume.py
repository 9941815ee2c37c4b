"""An interrupted run, rerun with the same out folder, ends exactly where an uninterrupted one does; any host
resumes it, and folders written before the resume identity was path-free still resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from core.train.callbacks import NullCallbacks, Progress
from core.errors import JobCancelled, SpecError
from core.resume import LATER_FIELDS, RUN_STATE, resume_digest
from core.run import run_distillation
from core.spec import ExportSpec, JobSpec
from core.terms.registry import identity_loss


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
    straight = run_distillation(spec, tmp_path / "straight")

    interrupted = tmp_path / "interrupted"
    with pytest.raises(JobCancelled):
        run_distillation(spec, interrupted, InterruptAfterEpoch(stage, epoch=1))
    checkpoint = torch.load(interrupted / "checkpoints" / f"{stage}.pt", weights_only=True)
    assert checkpoint["epoch"] == 1

    rerun = Stages()
    resumed = run_distillation(spec, interrupted, rerun)
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


# --- the resume identity: path-free, and folders written before it still resume --------------------------------


class Uploads:
    """A host's resolver, as a worker's: upload ids -> files under its data folder `home`."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def resolve_dataset(self, dataset_id: str) -> Path:
        return self.home / "datasets" / dataset_id / "data.npz"

    def resolve_weights(self, reference: str) -> Path:
        return self.home / "models" / f"{reference}.safetensors"


class StopAfterTeacher(Stages):
    """Stops the run as soon as the teacher stage has finished (before the next stage starts)."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out

    def should_cancel(self) -> bool:
        return (self.out / "teacher.safetensors").exists()


def _home_with_digits(home: Path) -> Uploads:
    """A data folder holding the upload `ds_1`: scikit-learn's digits as an .npz."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    (home / "datasets" / "ds_1").mkdir(parents=True)
    np.savez(home / "datasets" / "ds_1" / "data.npz", x=digits.images.astype(np.float32) / 16.0, y=digits.target)
    return Uploads(home)


def _uploaded_spec() -> JobSpec:
    spec = _spec("e2kd", {}).model_dump(mode="json")
    spec["dataset"] = {**spec["dataset"], "name": None, "id": "ds_1"}
    spec["teacher"]["epochs"], spec["training"]["epochs"] = 2, 1
    return JobSpec.model_validate(spec)


def _digest_as_before(spec: JobSpec, home: Path) -> str:
    """run_state.json's digest as a worker wrote it before specs kept their upload ids: it swapped the id for
    its path, validated that spec again and digested it (canonical JSON, loss and export at their defaults left out)."""
    document = {**spec.model_dump(mode="json"), "dataset": dict(spec.dataset.model_dump(mode="json"))}
    document["dataset"].pop("id")
    document["dataset"]["path"] = str(home / "datasets" / "ds_1" / "data.npz")
    document = JobSpec.model_validate(document).model_dump(mode="json")
    document["loss"] = identity_loss(document["loss"])
    for block, names in LATER_FIELDS.items():  # fields the spec gained since: that worker's spec had none of them
        for name in names:
            document[block].pop(name, None)
    if document.get("export") == ExportSpec().model_dump(mode="json"):
        del document["export"]
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _saved_digest(out: Path) -> str:
    return json.loads((out / RUN_STATE).read_text())["spec_sha256"]


def test_hosts_with_different_data_folders_resume_each_others_run(tmp_path: Path) -> None:
    spec, out = _uploaded_spec(), tmp_path / "run"
    with pytest.raises(JobCancelled):
        run_distillation(spec, out, StopAfterTeacher(out), resolver=_home_with_digits(tmp_path / "a"))
    assert _saved_digest(out) == resume_digest(spec)

    rerun = Stages()
    result = run_distillation(spec, out, rerun, resolver=_home_with_digits(tmp_path / "b"))
    assert "training_teacher" not in rerun.stages and "distilling" in rerun.stages
    assert result["spec"] == spec.model_dump(mode="json") and result["spec"]["dataset"]["id"] == "ds_1"
    for name in ("metrics.json", RUN_STATE, "report.html", "README.md"):  # no host's data folder in any of them
        assert str(tmp_path / "a") not in (out / name).read_text() and str(tmp_path / "b") not in (out / name).read_text()


def test_a_run_folder_written_before_specs_kept_upload_ids_still_resumes(tmp_path: Path) -> None:
    """The folder an earlier worker left: it ran the spec with the id swapped for its path, and stopped after the
    teacher. The same worker (same data folder) resumes it without training the teacher again."""
    spec, out, uploads = _uploaded_spec(), tmp_path / "run", _home_with_digits(tmp_path / "home")
    path_spec = JobSpec.model_validate({
        **spec.model_dump(mode="json"),
        "dataset": {**spec.dataset.model_dump(mode="json"), "id": None,
                    "path": str(uploads.resolve_dataset("ds_1"))},
    })
    with pytest.raises(JobCancelled):
        run_distillation(path_spec, out, StopAfterTeacher(out))
    assert _saved_digest(out) == _digest_as_before(spec, uploads.home) != resume_digest(spec)
    teacher_weights = (out / "teacher.safetensors").read_bytes()

    with pytest.raises(SpecError, match="different spec"):  # another data folder cannot recompute the old digest
        run_distillation(spec, out, Stages(), resolver=_home_with_digits(tmp_path / "elsewhere"))

    rerun = Stages()
    result = run_distillation(spec, out, rerun, resolver=uploads)
    assert "training_teacher" not in rerun.stages and "distilling" in rerun.stages
    assert (out / "teacher.safetensors").read_bytes() == teacher_weights
    assert _saved_digest(out) == resume_digest(spec) == result["spec_sha256"]  # from now on, the path-free identity
    assert result["history"]["teacher"] and len(result["history"]["teacher"]) == 2
