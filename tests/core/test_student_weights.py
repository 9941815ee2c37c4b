"""Students started from weights: the head reset, the fit check, the epoch-0 evaluation, the card and report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.data import load_dataset
from core.errors import SpecError, WeightsError
from core.models import build_model, predict_logits, save_weights, set_input_normalisation
from core.models.compat import DatasetShape
from core.models.heads import classifier_keys, load_starting_weights
from core.run import run_distillation
from core.spec import JobSpec


def _saved(tmp_path: Path, arch: str, num_classes: int, in_channels: int, seed: int) -> tuple[Path, dict]:
    torch.manual_seed(seed)
    model = build_model(arch, num_classes, in_channels, image_size=32)
    path = tmp_path / f"{arch.replace('/', '_')}-{num_classes}.safetensors"
    save_weights(model, path)
    return path, load_file(str(path))


@pytest.mark.parametrize(("arch", "file_classes", "channels"), [
    ("resnet8", 7, 1),  # another class count: the reason for a reset
    ("resnet8", 10, 1),  # the same class count: the head still starts fresh
    ("timm/mobilenetv3_small_050", 1000, 3),  # ImageNet-1k weights into a 10-class student
])
def test_head_reset_keeps_every_other_tensor_bit_identical_and_gives_a_fresh_head(
    tmp_path: Path, arch: str, file_classes: int, channels: int
) -> None:
    path, saved = _saved(tmp_path, arch, file_classes, channels, seed=1)
    torch.manual_seed(2)
    fresh = {key: value.clone() for key, value in build_model(arch, 10, channels, image_size=32).state_dict().items()}
    torch.manual_seed(2)
    student = build_model(arch, 10, channels, image_size=32)
    load_starting_weights(student, path, arch, "reset", DatasetShape(10, channels))

    head = classifier_keys(arch)
    assert head and all(key.rpartition(".")[2] in ("weight", "bias") for key in head)
    state = student.state_dict()
    for key, value in state.items():
        if key in head:
            assert torch.equal(value, fresh[key]) and value.shape[0] == 10, key  # the fresh initialisation
            if saved[key].shape == value.shape:
                assert not torch.equal(value, saved[key]), key  # not the file's head
        else:
            assert torch.equal(value, saved[key]), key  # bit-identical to the file


def test_another_class_count_without_a_reset_is_refused_naming_the_field_and_the_fix(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path, "resnet8", 7, 1, seed=1)
    with pytest.raises(SpecError) as error:
        load_starting_weights(build_model("resnet8", 10, 1), path, "resnet8", "keep", DatasetShape(10, 1))
    assert error.value.field == "student.weights"
    assert "7 classes" in error.value.message and "reset" in error.value.message
    with pytest.raises(SpecError, match="3-channel"):  # a reset does not excuse another input
        path3, _ = _saved(tmp_path, "resnet8", 10, 3, seed=1)
        load_starting_weights(build_model("resnet8", 10, 1), path3, "resnet8", "reset", DatasetShape(10, 1))


def test_head_reset_without_weights_is_a_spec_error() -> None:
    with pytest.raises(ValueError) as error:
        JobSpec.model_validate({"dataset": {"name": "digits"}, "student": {"head": "reset"}})
    assert error.value.errors()[0]["loc"] == ("student", "head")  # type: ignore[attr-defined]


def _spec(name: str, **student: object) -> JobSpec:
    return JobSpec.model_validate({
        "name": name,
        "dataset": {"name": "digits", "image_size": 16, "shots_per_class": 15},
        "teacher": {"arch": "cnn", "epochs": 2},
        "student": {"arch": "resnet8", **student},
        "method": "kd",
        "training": {"epochs": 2, "batch_size": 32, "seed": 3},
        "report": {"heatmaps": 0, "latency_runs": 1},
        "export": {"onnx": False},
    })


def test_the_history_opens_with_the_students_accuracy_before_its_first_step(tmp_path: Path) -> None:
    """A student started from a finished run's student: its epoch-0 accuracy is the one those weights had."""
    first = run_distillation(_spec("first"), tmp_path / "first")
    epoch0 = first["history"]["student"][0]
    assert epoch0["epoch"] == 0 and 0.0 <= epoch0["test_accuracy"] <= 0.5  # a random resnet8 on 10 classes
    assert [entry["epoch"] for entry in first["history"]["student"]] == [0, 1, 2]

    weights = tmp_path / "first" / "student.safetensors"
    second = run_distillation(_spec("second", weights=str(weights)), tmp_path / "second")
    assert second["history"]["student"][0] == {"epoch": 0, "losses": {}, "test_accuracy": first["student_accuracy"]}

    card = (tmp_path / "second" / "README.md").read_text()
    assert 'base_model: "student.safetensors"' in card and "started from the weights student.safetensors" in card
    report = (tmp_path / "second" / "report.html").read_text()
    assert "started from student.safetensors" in report and "started from random weights" in (
        tmp_path / "first" / "report.html").read_text()
    for text in (card, report, json.dumps(second)):
        assert str(tmp_path / "second") not in text.replace(str(weights), "")  # no folder beyond the given path


def test_a_reset_head_starts_from_another_class_count_and_trains(tmp_path: Path) -> None:
    path, saved = _saved(tmp_path, "resnet8", 5, 1, seed=4)
    result = run_distillation(_spec("reset", weights=str(path), head="reset"), tmp_path / "run")
    trained = load_file(str(tmp_path / "run" / "student.safetensors"))
    assert trained["fc.weight"].shape[0] == 10 and result["history"]["student"][0]["epoch"] == 0
    assert "classifier re-initialised" in (tmp_path / "run" / "README.md").read_text()
    with pytest.raises(SpecError, match="5 classes"):
        run_distillation(_spec("keep", weights=str(path)), tmp_path / "refused")


def test_epoch0_accuracy_is_the_loaded_weights_accuracy_on_the_test_split(tmp_path: Path) -> None:
    """Checked against a forward of its own: the weights loaded by hand, scored on the same test split."""
    path, _ = _saved(tmp_path, "resnet8", 10, 1, seed=5)
    spec = _spec("own", weights=str(path))
    result = run_distillation(spec, tmp_path / "run")
    data = load_dataset(spec.dataset, seed=spec.dataset.split_seed)
    model = build_model("resnet8", 10, 1)
    model.load_state_dict(load_file(str(path)))
    set_input_normalisation(model, data.mean, data.std)
    logits = predict_logits(model, data.test_x, torch.device("cpu"))
    expected = float((logits.argmax(dim=1) == data.test_y).float().mean())
    assert result["history"]["student"][0]["test_accuracy"] == expected


class _DeletedUploads:
    """A host whose model upload is gone: its resolver names the teacher's field, as worker resolvers do."""

    def resolve_dataset(self, dataset_id: str) -> Path:
        raise AssertionError("the spec names no uploaded dataset")

    def resolve_weights(self, reference: str) -> Path:
        raise WeightsError(f"model '{reference}' does not exist (deleted?)", field="teacher.weights")


def test_a_missing_starting_upload_fails_the_job_on_the_students_field(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as error:
        run_distillation(_spec("gone", weights="mdl_1"), tmp_path / "run", resolver=_DeletedUploads())
    assert error.value.field == "student.weights" and "mdl_1" in error.value.message
