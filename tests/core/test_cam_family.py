"""The CAM family in a job: spec validation, the student's side, the settings and the cost warning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

import core.explain.cost as cost
from core.explain import ForwardPass, explanation_maps, student_side
from core.explain.cam import tapped_forward
from core.explain.cost import explanation_cost_warning
from core.models import build_model, explained_layer
from core.run import run_distillation
from core.spec import JobSpec
from tests.core.test_run import tiny_spec

GRADIENT_CAMS = ("cam", "gradcampp", "xgradcam", "layercam")


def test_cam_on_a_head_that_is_not_linear_after_pooling_is_a_spec_error_naming_the_explainer_and_the_reason() -> None:
    spec = tiny_spec("e2kd", student={"arch": "timm/convnext_atto"}, loss={"explanation": {"explainer": "cam"}})
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate({**spec, "method": None, "loss": {"kd": 1.0, "explanation": {
            "weight": 1.0, "explainer": "cam"}}})
    (error,) = caught.value.errors()
    assert error["loc"] == ("loss", "explanation", "explainer")
    assert "the cam explainer needs a linear classifier right after global average pooling" in error["msg"]
    assert "'timm/convnext_atto' has another head (student.arch)" in error["msg"]
    JobSpec.model_validate({**spec, "student": {"arch": "resnet8"}, "method": None,
                            "loss": {"kd": 1.0, "explanation": {"weight": 1.0, "explainer": "cam"}}})


@pytest.mark.parametrize("explainer", GRADIENT_CAMS)
def test_the_gradient_cams_explain_the_student_differentiably_in_its_parameters(explainer: str) -> None:
    """One double backward, like Grad-CAM: the map's gradient reaches the convolutions and the classifier."""
    torch.manual_seed(0)
    model = build_model("resnet8", 10, 3)
    forward = tapped_forward(model, torch.randn(4, 3, 16, 16), explained_layer(model))
    maps = explanation_maps(explainer, forward, torch.tensor([0, 1, 2, 3]), create_graph=True)
    assert maps.requires_grad
    grads = torch.autograd.grad(maps.pow(2).sum(), [model.layer3[0].conv1.weight, model.fc.weight])
    assert all(float(grad.abs().sum()) > 0 for grad in grads)


@pytest.mark.parametrize(("explainer", "student"), [("scorecam", "gradcam"), ("sscam", "gradcam"),
                                                     ("iscam", "gradcam"), ("smoothgradcampp", "gradcampp")])
def test_the_costly_cams_explain_the_student_with_their_cheapest_equivalent(explainer: str, student: str) -> None:
    torch.manual_seed(0)
    model = build_model("resnet8", 10, 3)
    forward = tapped_forward(model, torch.randn(3, 3, 16, 16), explained_layer(model))
    target = torch.tensor([4, 5, 6])
    assert student_side(explainer) == student
    torch.testing.assert_close(explanation_maps(explainer, forward, target, create_graph=True),
                               explanation_maps(student, forward, target, create_graph=True))


def test_the_sampling_settings_stay_out_of_the_spec_at_their_defaults_and_reach_the_explainers() -> None:
    plain = JobSpec.model_validate(tiny_spec("e2kd"))
    assert not {"samples", "noise", "batch"} & set(plain.model_dump()["loss"]["explanation"])  # identity unchanged
    tuned = JobSpec.model_validate(tiny_spec("e2kd", loss={"explanation": {
        "weight": 1.0, "explainer": "sscam", "samples": 3, "noise": 0.5, "batch": 8}}))
    assert tuned.model_dump()["loss"]["explanation"]["samples"] == 3
    settings = tuned.loss.explanation.settings(seed=5)
    assert (settings.samples, settings.noise, settings.batch, settings.seed) == (3, 0.5, 8, 5)
    with pytest.raises(ValidationError, match="batch"):
        JobSpec.model_validate(tiny_spec("e2kd", loss={"explanation": {"batch": 0}}))


def test_a_score_based_explainer_on_every_step_of_a_large_job_is_warned_with_its_estimated_cost() -> None:
    message = explanation_cost_warning("scorecam", every=1, steps=5000, channels=64)
    assert message is not None
    assert "about 64 extra teacher forwards per guided step" in message and "320000" in message
    assert "loss.explanation.every" in message
    assert explanation_cost_warning("scorecam", every=50, steps=5000, channels=64) is None  # `every` bounds it
    assert explanation_cost_warning("gradcam", every=1, steps=10**6, channels=512) is None
    assert explanation_cost_warning("scorecam", every=1, steps=20, channels=64) is None  # a small job


@pytest.mark.slow
def test_a_scorecam_job_trains_warns_and_shows_its_panels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cost, "LARGE_JOB_FORWARDS", 100)  # this tiny job counts as large
    spec = JobSpec.model_validate({**tiny_spec(None), "loss": {"ce": 1.0, "kd": 1.0, "explanation": {
        "weight": 1.0, "explainer": "scorecam", "distance": "mse", "batch": 256}}})
    result = run_distillation(spec, tmp_path)
    assert "explanation" in result["history"]["student"][-1]["losses"]
    (warning,) = [w for w in result["warnings"] if w["code"] == "explainer_cost"]
    assert "scorecam" in warning["message"]
    assert -1.0 <= result["explanation_cosine"] <= 1.0
    assert result["explanation_cosine"] != result["explanation_cosine_gradcam"]  # Score-CAM's own, beside Grad-CAM's
    assert json.loads((tmp_path / "metrics.json").read_text())["warnings"] == result["warnings"]


@pytest.mark.parametrize("explainer", ["cam", "gradcampp", "smoothgradcampp", "scorecam", "xgradcam", "layercam"])
def test_a_frozen_model_is_explained_like_a_trainable_one(explainer: str) -> None:
    """The job's teacher is frozen (requires_grad False) when the evaluation and the heatmaps explain it."""
    from core.explain.reference import captum_maps

    torch.manual_seed(0)
    model = build_model("resnet8", 10, 3).eval()
    x, target = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    trainable = captum_maps(model, x, target, explainer)
    torch.testing.assert_close(captum_maps(model.requires_grad_(False), x, target, explainer), trainable)
