"""teacher.normalize: a teacher trained with its own normalisation is fed it, on the device; the student keeps
the dataset's; metrics.json, the report and the model card say what each model was fed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core.data import load_dataset
from core.models import build_model, save_weights
from core.run import run_distillation
from core.spec import JobSpec
from tests.core.test_run import tiny_spec

OWN_MEAN, OWN_STD = 0.7, 0.2  # the teacher's (m1, s1); the dataset's (m2, s2) are its own statistics


def _own(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Dataset-normalised images -> the teacher's normalisation."""
    return (x * std[0] + mean[0] - OWN_MEAN) / OWN_STD


def test_with_teacher_normalize_the_job_scores_the_teachers_own_accuracy(tmp_path: Path) -> None:
    base = tiny_spec("kd", training={"epochs": 1})
    data = load_dataset(JobSpec.model_validate(base).dataset)
    torch.manual_seed(0)
    teacher = build_model("cnn", 10, 1)
    optimiser = torch.optim.SGD(teacher.parameters(), lr=0.05, momentum=0.9)
    train_x, train_y = _own(data.train_x, data.mean, data.std), data.train_y
    teacher.train()
    for _ in range(40):
        optimiser.zero_grad()
        F.cross_entropy(teacher(train_x), train_y).backward()
        optimiser.step()
    teacher.eval()
    with torch.no_grad():
        own_accuracy = (teacher(_own(data.test_x, data.mean, data.std)).argmax(1) == data.test_y).float().mean().item()
    save_weights(teacher, tmp_path / "teacher.safetensors")
    given = {"arch": "cnn", "weights": str(tmp_path / "teacher.safetensors"), "epochs": 0}

    fed = run_distillation(JobSpec.model_validate(
        {**base, "teacher": {**given, "normalize": {"mean": [OWN_MEAN], "std": [OWN_STD]}}}), tmp_path / "fed")
    unfed = run_distillation(JobSpec.model_validate({**base, "teacher": given}), tmp_path / "unfed")

    assert own_accuracy > 0.7
    assert fed["teacher_accuracy"] == pytest.approx(own_accuracy, abs=1e-9)
    assert unfed["teacher_accuracy"] < own_accuracy - 0.1  # the README's table shows both
    print(f"teacher's own accuracy {own_accuracy:.3f}; job with teacher.normalize {fed['teacher_accuracy']:.3f}; "
          f"without {unfed['teacher_accuracy']:.3f}")
    assert fed["inputs"]["teacher"] == {"mean": [OWN_MEAN], "std": [OWN_STD], "source": "own"}
    assert fed["inputs"]["student"]["source"] == "dataset"
    assert fed["inputs"]["student"]["mean"] == pytest.approx(data.mean)
    card = (tmp_path / "fed" / "README.md").read_text()
    assert "The teacher was fed its own normalisation (teacher.normalize): per-channel mean/std 0.700/0.200" in card
    assert "The student was fed the dataset's normalisation" in card
    assert "its own normalisation" in (tmp_path / "fed" / "report.html").read_text()


def test_normalize_model_needs_a_timm_teacher_and_normalize_needs_weights(tmp_path: Path) -> None:
    from core.errors import SpecError

    save_weights(build_model("cnn", 10, 1), tmp_path / "t.safetensors")
    spec = JobSpec.model_validate(tiny_spec("kd", teacher={
        "arch": "cnn", "weights": str(tmp_path / "t.safetensors"), "epochs": 0, "normalize": "model"}))
    with pytest.raises(SpecError, match="'model' needs a timm teacher") as raised:
        run_distillation(spec, tmp_path / "out")
    assert raised.value.field == "teacher.normalize"
    with pytest.raises(ValueError, match="teacher.normalize describes given teacher weights"):
        JobSpec.model_validate(tiny_spec("kd", teacher={"normalize": {"mean": [0.5], "std": [0.5]}}))


def test_normalize_model_reads_a_timm_models_default_config() -> None:
    from core.models.inputs import feed_normalisation, model_normalisation

    model = build_model("timm/mobilenetv3_small_050", 10, 3).eval()
    assert model_normalisation(model) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    feed_normalisation(model, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], *model_normalisation(model))
    seen: list[torch.Tensor] = []  # a hook registered after the renormalisation sees what the network sees
    model.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    x = torch.randn(1, 3, 32, 32)
    model(x)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], (x * 0.25 + 0.5 - mean) / std)
