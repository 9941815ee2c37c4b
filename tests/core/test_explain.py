"""The training-time maps of core.explain are captum's maps, and they carry a graph."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from captum.attr import InputXGradient, LayerGradCam, Saliency

from core.explain import (
    EXPLAINERS,
    Explainer,
    ExplainerSettings,
    FeatureTap,
    ForwardPass,
    explainer_problem,
    explaining_forwards,
    explanation_maps,
    get_explainer,
    gradcam_maps,
    input_gradient_maps,
    input_x_gradient_maps,
    map_source,
    minmax_normalize,
    explainer_settings,
    register,
    shown_explainers,
    student_side,
)
from core.explain.reference import captum_maps
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


@pytest.fixture(autouse=True)
def _few_samples() -> Iterator[None]:
    """Two noise/scale draws for the sampling CAMs (their defaults, 35 for SS-CAM, would only cost time here)."""
    with explainer_settings(ExplainerSettings(samples=2, batch=64)):
        yield


# Models for the registry-wide tests: each explainer is tested on the first one it fits.
_ARCHS = ("resnet8", "bcos/cifar10_resnet8")


def _arch_for(explainer: str) -> str:
    return next(arch for arch in _ARCHS if get_explainer(explainer).arch_problem(arch) is None)


def _training_form(model: torch.nn.Module, explainer: str, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The map as training makes it: from the model's own forward, through the tap the objective uses."""
    tap = FeatureTap(map_source(model, explainer) or explained_layer(model))
    inputs = x.clone().requires_grad_()
    with explaining_forwards(explainer, model):
        forward = ForwardPass(model, inputs, model(inputs), tap.take())
        maps = explanation_maps(explainer, forward, target)
    tap.remove()
    return maps


@pytest.mark.parametrize("explainer", list(EXPLAINERS))
def test_every_explainer_makes_the_same_map_in_its_training_and_its_captum_form(explainer: str) -> None:
    """Training optimises the same maps that core.explain.reference serves and evaluates, for every registered name."""
    model, x, target = _model_and_batch(_arch_for(explainer), seed=2)
    reference = captum_maps(model, x, target, explainer)
    assert reference.abs().max() > 1e-4  # a non-trivial map, so the comparison means something
    torch.testing.assert_close(_training_form(model, explainer, x, target), reference, atol=1e-5, rtol=1e-4)


def _counted_passes(explainer: str, create_graph: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[float, int]:
    """(images forwarded / batch size, autograd.grad calls) of one batch of training-form maps beyond its forward."""
    model, x, target = _model_and_batch(_arch_for(explainer), seed=4)
    tap = FeatureTap(map_source(model, explainer) or explained_layer(model))
    inputs = x.clone().requires_grad_()
    images, backwards = [0], [0]
    with explaining_forwards(explainer, model):
        forward = ForwardPass(model, inputs, model(inputs), tap.take())
        hook = model.register_forward_hook(lambda _m, args, _o: images.__setitem__(0, images[0] + len(args[0])))
        real_grad = torch.autograd.grad

        def counting_grad(*args: object, **kwargs: object) -> tuple[torch.Tensor, ...]:
            backwards[0] += 1
            return real_grad(*args, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(torch.autograd, "grad", counting_grad)
            explanation_maps(explainer, forward, target, create_graph=create_graph)
    hook.remove()
    tap.remove()
    return images[0] / len(x), backwards[0]


@pytest.mark.parametrize("explainer", list(EXPLAINERS))
def test_every_training_form_costs_the_passes_it_declares(explainer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training form reads the forward already run: no forward beyond what the explainer declares.

    The student's (differentiable) side costs its `student_side` explainer's passes; the teacher's
    side costs `cost(channels)` (the score-based CAMs: a forward per channel and sample draw).
    """
    student = get_explainer(student_side(explainer))
    assert _counted_passes(explainer, True, monkeypatch) == (student.forward_passes, student.backward_passes)
    model, x, _ = _model_and_batch(_arch_for(explainer))
    tap = FeatureTap(explained_layer(model))
    model(x)
    channels = tap.take().shape[1]
    tap.remove()
    assert _counted_passes(explainer, False, monkeypatch) == get_explainer(explainer).cost(channels)


class _DoubledSaliency(Explainer):
    """A toy explainer, as a new module would define it: twice the input gradient, and no 'cnn' models."""

    name = "toy"
    label = "toy"
    reference = "captum Saliency (abs), summed over channels, doubled"
    needs_input_grad = True

    def arch_problem(self, arch: str) -> str | None:
        return "the toy explainer does not explain 'cnn'" if arch == "cnn" else None

    def maps(self, forward: ForwardPass, target: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        return 2 * input_gradient_maps(forward.logits, forward.inputs, target, create_graph)

    def attribute(self, model: torch.nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 2 * Saliency(model).attribute(inputs, target=target, abs=True).sum(dim=1, keepdim=True)


@pytest.fixture
def toy() -> Iterator[Explainer]:
    register(_DoubledSaliency)
    try:
        yield get_explainer("toy")
    finally:
        EXPLAINERS.pop("toy")


def test_an_explainer_added_as_one_registered_class_serves_training_evaluation_and_validation(toy: Explainer) -> None:
    assert isinstance(toy, _DoubledSaliency)
    assert explainer_problem("toy", "resnet8") is None
    assert explainer_problem("toy", "cnn") == "the toy explainer does not explain 'cnn'"
    assert shown_explainers("toy") == ["toy", "gradcam"]
    model, x, target = _model_and_batch("resnet8", seed=3)
    evaluated = captum_maps(model, x, target, "toy")
    torch.testing.assert_close(evaluated, 2 * captum_maps(model, x, target, "input_gradient"))
    torch.testing.assert_close(_training_form(model, "toy", x, target), evaluated, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="already registered"):
        register(_DoubledSaliency)


def test_the_training_form_refuses_a_forward_that_lacks_what_the_explainer_reads() -> None:
    model, x, target = _model_and_batch("cnn")
    with pytest.raises(ValueError, match="needs the tapped activations"):
        explanation_maps("gradcam", ForwardPass(model, x, model(x)), target)
    with pytest.raises(ValueError, match="needs inputs that required grad"):
        explanation_maps("input_gradient", ForwardPass(model, x, model(x)), target)


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


def test_minmax_normalize_maps_each_sample_to_unit_range_and_constant_maps_to_zero() -> None:
    maps = torch.stack([torch.arange(16.0).view(1, 4, 4) * 3 - 5, torch.full((1, 4, 4), 2.0)])
    normalised = minmax_normalize(maps)
    assert normalised[0].min() == 0 and normalised[0].max() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(normalised[1], torch.zeros(1, 4, 4))
    assert torch.isfinite(normalised).all()
