"""captum reference maps: shapes per explainer, Grad-CAM sign, and the resize rule."""

from __future__ import annotations

import pytest
import torch

from core.explain import map_cosine, resize_to_larger
from core.explain.reference import captum_maps
from core.models import build_model

torch.set_num_threads(1)


def _model(arch: str, in_channels: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(arch, 10, in_channels)


@pytest.mark.parametrize(
    ("arch", "explainer", "shape"),
    [
        ("resnet8", "gradcam", (5, 1, 8, 8)),  # layer3 of a CIFAR ResNet: stride 4
        ("resnet8", "input_gradient", (5, 1, 32, 32)),
        ("resnet8", "input_x_gradient", (5, 1, 32, 32)),
        ("cnn", "gradcam", (5, 1, 8, 8)),  # two 2x2 max-pools
        ("cnn", "input_gradient", (5, 1, 32, 32)),
        ("cnn", "input_x_gradient", (5, 1, 32, 32)),
    ],
)
def test_captum_maps_have_one_channel_at_the_explainers_resolution(arch: str, explainer: str, shape: tuple) -> None:
    x = torch.randn(5, 3, 32, 32)
    maps = captum_maps(_model(arch), x, torch.arange(5), explainer, batch_size=2)
    assert tuple(maps.shape) == shape
    assert not maps.requires_grad
    assert torch.isfinite(maps).all()


def test_gradcam_maps_are_non_negative_and_not_all_zero() -> None:
    model = _model("resnet8")
    x = torch.randn(8, 3, 32, 32)
    maps = captum_maps(model, x, torch.zeros(8, dtype=torch.long), "gradcam")
    assert (maps >= 0).all()
    assert maps.sum() > 0


def test_input_gradient_is_the_channel_sum_of_absolute_input_gradients() -> None:
    model = _model("cnn").eval()
    x = torch.randn(3, 3, 16, 16, requires_grad=True)
    target = torch.tensor([1, 4, 7])
    logits = model(x)
    (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)
    expected_saliency = grad.abs().sum(dim=1, keepdim=True)
    expected_ixg = (x * grad).sum(dim=1, keepdim=True)
    assert torch.allclose(captum_maps(model, x.detach(), target, "input_gradient"), expected_saliency, atol=1e-6)
    assert torch.allclose(captum_maps(model, x.detach(), target, "input_x_gradient"), expected_ixg, atol=1e-6)


def test_batching_does_not_change_the_maps() -> None:
    model = _model("resnet8")
    x = torch.randn(7, 3, 32, 32)
    target = torch.arange(7) % 10
    in_threes, at_once = captum_maps(model, x, target, batch_size=3), captum_maps(model, x, target, batch_size=7)
    assert torch.allclose(in_threes, at_once, atol=1e-6)


def test_captum_maps_restores_training_mode_and_leaves_inputs_untouched() -> None:
    model = _model("cnn").train()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # a caller's no_grad must not break attribution
        captum_maps(model, x, torch.tensor([0, 1]), "input_gradient")
    assert model.training
    assert not x.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_captum_maps_rejects_unknown_explainer_and_mismatched_targets() -> None:
    model = _model("cnn")
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="unknown explainer 'lime'"):
        captum_maps(model, x, torch.tensor([0, 1]), "lime")
    with pytest.raises(ValueError, match="3 targets for 2 inputs"):
        captum_maps(model, x, torch.tensor([0, 1, 2]))


def test_resize_to_larger_upsamples_the_smaller_map_bilinearly() -> None:
    small = torch.arange(4.0).view(1, 1, 2, 2)
    large = torch.zeros(1, 1, 4, 4)
    for a, b in ((small, large), (large, small)):
        ra, rb = resize_to_larger(a, b)
        assert ra.shape == rb.shape == (1, 1, 4, 4)
    resized, same = resize_to_larger(small, large)
    assert same is large
    expected = torch.nn.functional.interpolate(small, size=(4, 4), mode="bilinear", align_corners=False)
    assert torch.equal(resized, expected)
    # corners of a bilinear (align_corners=False) upsample keep the corner values
    assert resized[0, 0, 0, 0] == 0.0 and resized[0, 0, -1, -1] == 3.0


def test_resize_to_larger_keeps_maps_of_equal_size() -> None:
    a, b = torch.rand(2, 1, 5, 5), torch.rand(2, 1, 5, 5)
    ra, rb = resize_to_larger(a, b)
    assert ra is a and rb is b


def test_map_cosine_is_one_for_equal_maps_and_zero_when_a_map_is_all_zeros() -> None:
    a = torch.rand(3, 1, 4, 4) + 0.1
    b = a.clone()
    b[1] = 0.0
    b[2] = 2 * a[2]  # cosine ignores scale
    cos = map_cosine(a, b)
    assert cos[0] == pytest.approx(1.0, abs=1e-6)
    assert cos[1] == 0.0
    assert cos[2] == pytest.approx(1.0, abs=1e-6)


def test_map_cosine_of_orthogonal_maps_is_zero_across_resolutions() -> None:
    left = torch.zeros(1, 1, 4, 4)
    left[..., :, :1] = 1.0
    right = torch.zeros(1, 1, 8, 8)
    right[..., :, 6:] = 1.0  # far right: the upsampled left map has no mass there
    assert map_cosine(left, right)[0] == pytest.approx(0.0, abs=1e-6)
