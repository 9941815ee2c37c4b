"""training.precision: bf16/fp16 autocast trains without NaN on the CPU; explanation maps stay float32."""

from __future__ import annotations

import math

import pytest
import torch

from core.data import DataBundle
from core.explain import FeatureTap, gradcam_maps
from core.models import build_model, explained_layer
from core.train.precision import Precision
from core.spec import JobSpec
from core.terms import build_terms
from core.train.loop import DistillationObjective, OptimConfig, train

CPU = torch.device("cpu")


def test_cpu_bf16_e2kd_trains_without_nan_and_caches_float32_maps(
    digits16: DataBundle, trained_teacher: torch.nn.Module
) -> None:
    spec_loss = JobSpec.model_validate({"dataset": {"name": "digits"}, "method": "e2kd"}).loss
    torch.manual_seed(0)
    student = build_model("resnet8", digits16.num_classes, digits16.in_channels)
    before = {key: value.clone() for key, value in student.state_dict().items()}
    objective = DistillationObjective(student, build_terms(spec_loss, 64, 128), digits16, CPU,
                                      teacher=trained_teacher, explanation=spec_loss.explanation, cache_maps=True)
    history = train(student, objective, digits16.train, None,
                    OptimConfig(epochs=2, batch_size=32, lr=0.05, precision="bf16"), stage="distilling", device=CPU)
    objective.close()

    assert all(math.isfinite(entry["loss"]) for entry in history)
    assert all(math.isfinite(value) for entry in history for value in entry["losses"].values())
    assert history[-1]["loss"] < history[0]["loss"] * 1.5  # it trains, it does not diverge
    assert all(torch.isfinite(value.float()).all() for value in student.state_dict().values())
    assert any(not torch.equal(before[key], value) for key, value in student.state_dict().items())
    assert all(value.dtype != torch.bfloat16 for value in student.state_dict().values())  # weights stay fp32
    cache = objective.signals.provider("target_maps").cache  # the teacher-map cache's provider
    assert cache.maps is not None and cache.maps.dtype == torch.float32


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gradcam_under_autocast_is_float32_and_close_to_fp32(precision: str) -> None:
    torch.manual_seed(0)
    model = build_model("cnn", 4, 3).eval()
    x, target = torch.randn(2, 3, 16, 16), torch.tensor([0, 3])
    tap = FeatureTap(explained_layer(model))
    reference = gradcam_maps(model(x), tap.take(), target)
    with Precision(precision, CPU).autocast():
        logits = model(x)
        maps = gradcam_maps(logits, tap.take(), target)
    tap.remove()
    assert logits.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert maps.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(maps.flatten(1), reference.flatten(1)).min()
    assert cosine > 0.98


def test_fp16_uses_a_grad_scaler_only_on_cuda_and_channels_last_only_where_it_helps() -> None:
    assert Precision("fp16", CPU).scaler is None and Precision("bf16", CPU).channels_last
    assert Precision("fp32", CPU).channels_last and not Precision("fp32", torch.device("cuda")).channels_last
    assert Precision("bf16", torch.device("cuda")).channels_last
    with pytest.raises(ValueError, match="precision"):
        Precision("fp8", CPU)
    assert JobSpec.model_validate({"dataset": {"name": "digits"}, "training": {"precision": "bf16"}}
                                  ).training.precision == "bf16"


def test_a_cpu_stage_runs_student_and_teacher_channels_last_and_leaves_both_contiguous(
    digits16: DataBundle, trained_teacher: torch.nn.Module
) -> None:
    spec_loss = JobSpec.model_validate({"dataset": {"name": "digits"}, "method": "kd"}).loss
    torch.manual_seed(0)
    student = build_model("resnet8", digits16.num_classes, digits16.in_channels)
    objective = DistillationObjective(student, build_terms(spec_loss, 64, 128), digits16, CPU, teacher=trained_teacher)
    seen: list[tuple[bool, bool, bool]] = []
    original_step = objective.step
    student_conv, teacher_conv = (next(p for p in m.parameters() if p.dim() == 4) for m in (student, trained_teacher))

    def step(batch):  # type: ignore[no-untyped-def]
        seen.append((batch.x.is_contiguous(memory_format=torch.channels_last),
                     student_conv.is_contiguous(memory_format=torch.channels_last),
                     teacher_conv.is_contiguous(memory_format=torch.channels_last)))
        return original_step(batch)

    objective.step = step  # type: ignore[method-assign]
    train(student, objective, digits16.train, None, OptimConfig(epochs=1, batch_size=64, lr=0.05),
          stage="distilling", device=CPU)
    objective.close()

    assert seen and all(all(flags) for flags in seen)  # inside the stage: NHWC inputs, student and teacher
    for model in (student, trained_teacher):  # after it: the default layout, as a model read from a file has
        assert all(value.is_contiguous() for value in model.state_dict().values())
