"""A method is one registered unit: a toy term declared in this file alone reaches the spec and trains."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from pydantic import Field, ValidationError

from core.data import DataBundle
from core.models import build_model
from core.train.objective import DistillationObjective
from core.spec import PRESETS, JobSpec, LossSpec
from core.strict import StrictModel
from core.terms import BatchContext, Term, TermUnit, build_terms, register, registry, unregister
from core.terms.base import TEACHER_LOGITS
from core.train.loop import OptimConfig, train

CPU = torch.device("cpu")


class ToySpec(StrictModel):
    weight: float = Field(0.0, ge=0.0)
    scale: float = Field(1.0, gt=0.0)


class LogitMatching(Term):
    """scale * mean((z_s - z_t)^2): the student copies the teacher's raw logits (Ba & Caruana, 2014)."""

    name = "toy"
    needs = frozenset({TEACHER_LOGITS})

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, ctx: BatchContext) -> torch.Tensor:
        assert ctx.teacher_logits is not None
        return self.scale * (ctx.student_logits - ctx.teacher_logits).pow(2).mean()


@pytest.fixture
def toy_unit() -> Iterator[TermUnit]:
    unit = register(TermUnit(
        name="toy",
        fields={"toy": (ToySpec, Field(default_factory=ToySpec))},
        weight=lambda loss: loss.toy.weight,
        factory=lambda loss, sizes: LogitMatching(loss.toy.scale),
        presets={"toy-kd": {"ce": 1.0, "toy": {"weight": 0.5}}},
    ))
    yield unit
    unregister("toy")


def test_a_term_registered_in_a_test_file_is_validated_and_trains(
    toy_unit: TermUnit, digits16: DataBundle, trained_teacher: torch.nn.Module
) -> None:
    toy_loss_spec = registry.loss_spec_model()
    assert "toy" in toy_loss_spec.model_json_schema()["properties"]
    with pytest.raises(ValidationError) as caught:
        toy_loss_spec.model_validate({"toy": {"wieght": 1.0}})
    assert [error["loc"] for error in caught.value.errors()] == [("toy", "wieght")]

    loss = toy_loss_spec.model_validate(registry.presets()["toy-kd"])
    terms = build_terms(loss, 128, 128)
    assert terms.names == ["ce", "toy"] and terms.weights == [1.0, 0.5]
    torch.manual_seed(0)
    student = build_model("cnn", 10, 1)
    objective = DistillationObjective(student, terms, digits16, CPU, teacher=trained_teacher)
    history = train(student, objective, digits16.train_x, digits16.train_y, OptimConfig(epochs=2, batch_size=32),
                    stage="distilling", device=CPU)
    objective.close()
    assert [set(entry["losses"]) for entry in history] == [{"ce", "toy"}] * 2
    assert history[-1]["losses"]["toy"] < history[0]["losses"]["toy"]


def test_the_spec_does_not_know_a_unit_that_is_not_registered() -> None:
    assert "toy" not in LossSpec.model_fields and "toy-kd" not in PRESETS
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate({"dataset": {"name": "digits"}, "loss": {"toy": {"weight": 1.0}}})
    assert [error["loc"] for error in caught.value.errors()] == [("loss", "toy")]


def test_a_unit_may_not_redefine_a_registered_field_or_preset() -> None:
    for clash in ({"fields": {"kd": (float, Field(0.0))}}, {"fields": {}, "presets": {"e2kd": {}}}):
        with pytest.raises(ValueError, match="redefines"):
            register(TermUnit(name="clash", **clash))
    assert "clash" not in [unit.name for unit in registry.units()]


def test_every_preset_and_the_method_choices_come_from_the_units() -> None:
    assert list(PRESETS) == [name for unit in registry.units() for name in unit.presets]
    assert {"scratch", "kd", "e2kd", "e2kd-bcos", "xai-mse", "oracle", "xdistill", "at", "fitnet", "dkd", "dist"} == set(PRESETS)
    for method in PRESETS:
        models = {"teacher": {"arch": "bcos/cifar10_resnet20"}, "student": {"arch": "bcos/cifar10_resnet8"}}
        spec = JobSpec.model_validate({"dataset": {"name": "digits"}, "method": method,
                                       **(models if method == "e2kd-bcos" else {})})
        assert build_terms(spec.loss, 8, 8).names  # every preset builds a loss
