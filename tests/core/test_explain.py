"""The training-time maps of core.explain are captum's maps, and they carry a graph."""

from __future__ import annotations

import pytest
import torch
from captum.attr import InputXGradient, LayerGradCam, Saliency

from core.explain.reference import captum_maps
from core.explain import (
    EXPLAINERS,
    Explainer,
    FeatureTap,
    explainer_problem,
    explaining_forwards,
    explanation_maps,
    gradcam_maps,
    input_gradient_maps,
    input_x_gradient_maps,
    map_source,
    match_size,
    minmax_normalize,
)
from core.models import build_model, explained_layer


def _model_and_batch(arch: str, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=10, in_channels=3).eval()
    x = torch.randn(6, 3, 16, 16)
    target = torch.randint(0, 10, (6,))
    return model, x, target


@pytest.mark.parametrize("arch", ["resnet8", "cnn"])
def test_gradcam_maps_equal_captum_layer_gradcam(arch: str) -> None:
    model, x, target = _model_and_batch(arch)
    tap = FeatureTap(explained_layer(model))
    logits = model(x.clone().requires_grad_())
    ours = gradcam_maps(logits, tap.take(), target)
    tap.remove()

    reference = LayerGradCam(model, explained_layer(model)).attribute(x.clone(), target=target, relu_attributions=True)
    assert ours.shape == reference.shape == (6, 1, *reference.shape[-2:])
    assert reference.abs().max() > 1e-3  # a non-trivial map, so the comparison means something
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["resnet8", "cnn"])
def test_input_maps_equal_captum_saliency_and_input_x_gradient_summed_over_channels(arch: str) -> None:
    model, x, target = _model_and_batch(arch, seed=1)
    inputs = x.clone().requires_grad_()
    logits = model(inputs)
    saliency = input_gradient_maps(logits, inputs, target)
    input_x_gradient = input_x_gradient_maps(logits, inputs, target)

    fresh = lambda: x.clone().requires_grad_()  # noqa: E731
    saliency_ref = Saliency(model).attribute(fresh(), target=target, abs=True).sum(dim=1, keepdim=True)
    ixg_ref = InputXGradient(model).attribute(fresh(), target=target).sum(dim=1, keepdim=True)
    assert saliency.shape == (6, 1, 16, 16)
    torch.testing.assert_close(saliency, saliency_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(input_x_gradient, ixg_ref, atol=1e-5, rtol=1e-5)


def _training_form(model: torch.nn.Module, explainer: str, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The map as training makes it: from the model's own forward, through the tap the objective uses."""
    tap = FeatureTap(map_source(model, explainer) or explained_layer(model))
    inputs = x.clone().requires_grad_()
    with explaining_forwards(explainer, model):
        maps = explanation_maps(explainer, model(inputs), tap.take(), inputs, target)
    tap.remove()
    return maps


@pytest.mark.parametrize("explainer", list(EXPLAINERS))
def test_every_explainer_makes_the_same_map_in_its_training_and_its_captum_form(explainer: str) -> None:
    """Training optimises the same maps that core.explain.reference serves and evaluates, for every registered name."""
    arch = "bcos/cifar10_resnet8" if EXPLAINERS[explainer].bcos_only else "resnet8"
    model, x, target = _model_and_batch(arch, seed=2)
    reference = captum_maps(model, x, target, explainer)
    assert reference.abs().max() > 1e-4  # a non-trivial map, so the comparison means something
    torch.testing.assert_close(_training_form(model, explainer, x, target), reference, atol=1e-5, rtol=1e-4)


def test_an_explainer_added_as_one_registry_entry_serves_training_evaluation_and_validation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def doubled_saliency(model: torch.nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 2 * Saliency(model).attribute(inputs, target=target, abs=True).sum(dim=1, keepdim=True)

    def doubled_maps(logits: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor, graph: bool) -> torch.Tensor:
        return 2 * input_gradient_maps(logits, inputs, target, graph)

    monkeypatch.setitem(EXPLAINERS, "toy", Explainer("toy", "inputs", doubled_maps, doubled_saliency))
    model, x, target = _model_and_batch("cnn", seed=3)

    assert explainer_problem("toy", "resnet8") is None
    evaluated = captum_maps(model, x, target, "toy")
    torch.testing.assert_close(evaluated, 2 * captum_maps(model, x, target, "input_gradient"))
    torch.testing.assert_close(_training_form(model, "toy", x, target), evaluated, atol=1e-5, rtol=1e-5)


def test_gradcam_with_create_graph_sends_gradients_to_every_student_parameter_it_depends_on() -> None:
    torch.manual_seed(0)
    student = build_model("resnet8", num_classes=10, in_channels=1).train()
    tap = FeatureTap(explained_layer(student))
    x, target = torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))

    maps = gradcam_maps(student(x), tap.take(), target, create_graph=True)
    maps.pow(2).sum().backward()
    # alpha_k depends on the classifier weights only through the graph of the gradient itself.
    assert student.fc.weight.grad is not None and student.fc.weight.grad.abs().sum() > 0
    assert student.conv1.weight.grad is not None and student.conv1.weight.grad.abs().sum() > 0

    student.zero_grad(set_to_none=True)
    detached = gradcam_maps(student(x), tap.take(), target, create_graph=False)
    detached.pow(2).sum().backward()
    assert student.fc.weight.grad is None  # without create_graph, alpha is a constant
    tap.remove()


def test_input_gradient_with_create_graph_is_differentiable_in_the_parameters() -> None:
    torch.manual_seed(0)
    student = build_model("cnn", num_classes=10, in_channels=1).train()
    inputs = torch.randn(4, 1, 16, 16).requires_grad_()
    maps = input_gradient_maps(student(inputs), inputs, torch.randint(0, 10, (4,)), create_graph=True)
    maps.sum().backward()
    assert student.features[0][0].weight.grad.abs().sum() > 0


def test_feature_tap_refuses_a_stale_activation() -> None:
    model, x, _ = _model_and_batch("cnn")
    tap = FeatureTap(explained_layer(model))
    model(x)
    assert tap.take().shape[:2] == (6, 128)
    with pytest.raises(RuntimeError):
        tap.take()
    tap.remove()
    model(x)
    assert tap.activation is None


def test_match_size_resizes_the_smaller_map_to_the_larger() -> None:
    small, large = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 8, 8)
    a, b = match_size(small, large)
    assert a.shape == b.shape == (2, 1, 8, 8)
    assert torch.equal(b, large)
    b2, a2 = match_size(large, small)
    assert b2.shape == a2.shape == (2, 1, 8, 8) and torch.equal(b2, large)


def test_minmax_normalize_maps_each_sample_to_unit_range_and_constant_maps_to_zero() -> None:
    maps = torch.stack([torch.arange(16.0).view(1, 4, 4) * 3 - 5, torch.full((1, 4, 4), 2.0)])
    normalised = minmax_normalize(maps)
    assert normalised[0].min() == 0 and normalised[0].max() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(normalised[1], torch.zeros(1, 4, 4))
    assert torch.isfinite(normalised).all()
