"""Each loss term on hand-made tensors with known values, and the weighted sum a spec names."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core.spec import JobSpec
from core.terms import (
    AttentionTransfer,
    BatchContext,
    CrossEntropy,
    ExplanationAlignment,
    FitNetHint,
    KnowledgeDistillation,
    WeightedSum,
    build_terms,
)


def _ctx(**fields: torch.Tensor) -> BatchContext:
    fields.setdefault("labels", torch.tensor([0, 1]))
    fields.setdefault("student_logits", torch.zeros(2, 3))
    return BatchContext(**fields)


def test_cross_entropy_is_the_mean_negative_log_likelihood_of_the_label() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    value = CrossEntropy()(_ctx(student_logits=logits, labels=torch.tensor([0, 2])))
    expected = (-math.log(math.exp(2) / (math.exp(2) + 2)) + math.log(3)) / 2
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_kd_of_identical_logits_is_zero() -> None:
    logits = torch.randn(5, 10)
    value = KnowledgeDistillation(4.0)(_ctx(student_logits=logits, teacher_logits=logits.clone()))
    assert value.item() == pytest.approx(0.0, abs=1e-6)


def test_kd_is_t_squared_times_the_batch_mean_kl_from_teacher_to_student() -> None:
    student, teacher = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    for temperature in (1.0, 2.0, 4.0):
        p_t = F.softmax(teacher / temperature, dim=1)
        p_s = F.softmax(student / temperature, dim=1)
        kl = (p_t * (p_t.log() - p_s.log())).sum(dim=1).mean()
        value = KnowledgeDistillation(temperature)(_ctx(student_logits=student, teacher_logits=teacher))
        assert value.item() == pytest.approx(temperature**2 * kl.item(), rel=1e-5)
    # the T^2 factor: the same KL at T=2 is worth four times the bare KL
    halved = KnowledgeDistillation(2.0)(_ctx(student_logits=student * 2, teacher_logits=teacher * 2))
    bare = KnowledgeDistillation(1.0)(_ctx(student_logits=student, teacher_logits=teacher))
    assert halved.item() == pytest.approx(4 * bare.item(), rel=1e-5)


def test_kd_pulls_the_student_towards_the_teacher() -> None:
    student = torch.zeros(1, 3, requires_grad=True)
    teacher = torch.tensor([[3.0, 0.0, 0.0]])
    kd = KnowledgeDistillation(4.0)
    kd(_ctx(student_logits=student, teacher_logits=teacher, labels=torch.tensor([0]))).backward()
    assert student.grad[0, 0] < 0 < student.grad[0, 1]


def test_cosine_explanation_loss_is_zero_for_equal_maps_and_one_for_orthogonal_maps() -> None:
    term = ExplanationAlignment("cosine")
    left = torch.zeros(2, 1, 4, 4)
    left[:, :, :, :2] = 1.0
    right = 1.0 - left
    assert term(_ctx(student_maps=left, target_maps=left * 3.0)).item() == pytest.approx(0.0, abs=1e-6)
    assert term(_ctx(student_maps=left, target_maps=right)).item() == pytest.approx(1.0, abs=1e-6)


def test_cosine_explanation_loss_resizes_the_smaller_map_to_the_larger() -> None:
    term = ExplanationAlignment("cosine")
    coarse = torch.rand(3, 1, 4, 4) + 0.1
    fine = F.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False)
    assert term(_ctx(student_maps=coarse, target_maps=fine)).item() == pytest.approx(0.0, abs=1e-6)
    assert term(_ctx(student_maps=fine, target_maps=coarse)).item() == pytest.approx(0.0, abs=1e-6)


def test_mse_explanation_loss_compares_min_max_normalised_maps() -> None:
    term = ExplanationAlignment("mse")
    maps = torch.rand(2, 1, 4, 4)
    assert term(_ctx(student_maps=maps, target_maps=maps * 5 + 2)).item() == pytest.approx(0.0, abs=1e-6)
    zero_one = torch.zeros(1, 1, 2, 2)
    zero_one[0, 0, 0, 0] = 1.0
    opposite = 1.0 - zero_one
    assert term(_ctx(student_maps=zero_one, target_maps=opposite)).item() == pytest.approx(1.0, abs=1e-6)


def test_explanation_term_is_inactive_without_maps() -> None:
    assert not ExplanationAlignment("cosine").active(_ctx())
    maps = torch.ones(2, 1, 2, 2)
    assert ExplanationAlignment("cosine").active(_ctx(student_maps=maps, target_maps=maps))


def test_attention_transfer_ignores_feature_scale_and_knows_the_reference_value() -> None:
    term = AttentionTransfer()
    features = torch.rand(2, 8, 4, 4)
    assert term(_ctx(student_features=features, teacher_features=features * 7)).item() == pytest.approx(0.0, abs=1e-7)
    # one-hot attention in opposite corners: q_s - q_t has entries +1 and -1 among 4 per sample -> mean 2/4
    student = torch.zeros(1, 3, 2, 2)
    student[:, :, 0, 0] = 1.0
    teacher = torch.zeros(1, 5, 2, 2)
    teacher[:, :, 1, 1] = 2.0
    value = term(_ctx(student_features=student, teacher_features=teacher, labels=torch.tensor([0])))
    assert value.item() == pytest.approx(0.5, rel=1e-6)
    # different channel counts and resolutions are fine
    assert term(_ctx(student_features=torch.rand(2, 4, 4, 4), teacher_features=torch.rand(2, 16, 8, 8))).ndim == 0


def test_fitnet_hint_trains_its_regressor_and_maps_student_channels_to_the_teachers() -> None:
    term = FitNetHint(student_channels=4, teacher_channels=6)
    student = torch.rand(2, 4, 4, 4, requires_grad=True)
    teacher = torch.rand(2, 6, 8, 8)
    value = term(_ctx(student_features=student, teacher_features=teacher))
    expected = F.mse_loss(
        F.interpolate(term.regressor(student), size=(8, 8), mode="bilinear", align_corners=False), teacher
    )
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    value.backward()
    assert term.regressor.weight.grad.abs().sum() > 0 and student.grad.abs().sum() > 0


def test_weighted_sum_adds_active_terms_with_their_weights_and_skips_inactive_ones() -> None:
    logits, teacher = torch.randn(2, 3), torch.randn(2, 3)
    loss = WeightedSum(
        [(0.5, CrossEntropy()), (2.0, KnowledgeDistillation(2.0)), (9.0, ExplanationAlignment("cosine"))]
    )
    total, values = loss(_ctx(student_logits=logits, teacher_logits=teacher))
    assert set(values) == {"ce", "kd"}
    assert total.item() == pytest.approx(0.5 * values["ce"].item() + 2.0 * values["kd"].item(), rel=1e-6)


@pytest.mark.parametrize(
    ("method", "loss", "names"),
    [
        ("scratch", {}, ["ce"]),
        ("kd", {}, ["ce", "kd"]),
        ("e2kd", {}, ["ce", "kd", "explanation"]),
        ("xai-mse", {}, ["ce", "kd", "explanation"]),
        ("at", {}, ["ce", "at"]),
        ("fitnet", {}, ["ce", "fitnet"]),
        ("oracle", {"explanation": {"weight": 1.0}, "at": 1000.0}, ["ce", "kd", "explanation", "at"]),
        ("kd", {"ce": 0.0}, ["kd"]),
    ],
)
def test_build_terms_keeps_exactly_the_terms_with_positive_weight(method: str, loss: dict, names: list[str]) -> None:
    spec = JobSpec.model_validate({"dataset": {"name": "digits"}, "method": method, "loss": loss})
    terms = build_terms(spec.loss, student_channels=64, teacher_channels=64)
    assert terms.names == names
    assert (spec.loss.explanation.distance == "mse") == (method == "xai-mse")


def test_build_terms_refuses_a_loss_without_any_term() -> None:
    spec = JobSpec.model_validate({"dataset": {"name": "digits"}, "method": "scratch", "loss": {"ce": 0.0}})
    with pytest.raises(ValueError):
        build_terms(spec.loss, 8, 8)


TERM_MODULES = ("ce", "kd", "dkd", "dist", "explanation", "oracle", "at", "fitnet")


@pytest.mark.parametrize("module_name", TERM_MODULES)
def test_each_term_module_docstring_carries_specs_that_turn_it_on(module_name: str) -> None:
    """Every JSON snippet in a term module's docstring is a valid spec fragment that turns that term on."""
    import importlib
    import json
    import re

    from core.terms import term_weights

    doc = importlib.import_module(f"core.terms.{module_name}").__doc__ or ""
    snippets = [json.loads(text) for text in re.findall(r"`(\{.*?\})`", doc.replace("\n", " "))
                if text.startswith(('{"loss"', '{"method"'))]
    assert snippets, f"core/terms/{module_name}.py names no spec snippet"
    base = {"dataset": {"name": "digits"}, "teacher": {"arch": "resnet20"}, "student": {"arch": "resnet8"}}
    for snippet in snippets:
        spec = JobSpec.model_validate({**base, **snippet})
        if module_name == "oracle":  # a setting of the teacher's logits, not a weighted term
            assert spec.loss.oracle_gamma, snippet
        else:
            assert module_name in term_weights(spec.loss), (snippet, term_weights(spec.loss))
