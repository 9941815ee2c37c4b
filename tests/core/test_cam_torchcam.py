"""Every CAM this service makes equals torchcam's on the same model, layer, input and class.

Nine methods (Grad-CAM and the CAM family) on three architectures: the CIFAR ResNet
(core.models.cifar), a torchvision ResNet and a timm ConvNeXt, random weights and tiny inputs.
torchcam runs with `normalized=False` (it min-max scales by default; this service's maps are
not scaled, their consumers scale them). Tolerance: |ours - torchcam| <= 1e-4 * max|torchcam|
+ 1e-6 per map (float32 sums in another order), and 1e-3 where torchcam's noise is only nearly off.

Where the definitions differ, the test says how and pins it:
- CAM: torchcam does not apply the ReLU; ours == relu(torchcam's). ConvNeXt's head is a
  LayerNorm after pooling, so CAM does not apply to it: ours refuses it (torchcam does not check).
- Grad-CAM++: torchcam 0.5.0's GradCAMpp leaves alpha undivided (its weights are sum g^2 relu(g),
  pinned); ours equals its SmoothGradCAMpp with one noiseless sample, which divides.
- Smooth Grad-CAM++: torchcam weights the last noisy copy's activations with the last copy's
  relu(gradient) (pinned); ours weights the clean activations with the mean gradient, and the two
  agree as the noise goes to 0.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torchcam import methods as torchcam

from core.explain import ExplainerSettings, explainer_settings, get_explainer
from core.explain.cam import layer_gradients, tapped_forward, weighted_map
from core.explain.classic_cam import classifier
from core.explain.gradcampp import gradcampp_weights
from core.explain.reference import captum_maps
from core.models import build_model, explained_layer, explained_layer_path

ARCHS = {  # architecture -> input size: the explained layer keeps a 2x2 or 4x4 map
    "resnet8": 16,
    "torchvision/resnet18": 48,
    "timm/convnext_atto": 64,
}
SEED = 7
SAMPLES = 2  # SS-CAM / IS-CAM / Smooth Grad-CAM++ draws: torchcam's defaults (35, 10, 4) only cost time here
SSCAM_NOISE = 2.0


@pytest.fixture(scope="module", params=list(ARCHS))
def case(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(request.param, num_classes=5, in_channels=3).eval()
    size = ARCHS[request.param]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        target = model(x).argmin(dim=1)  # a class the model does not favour: maps less trivially positive
    return model, x, target


@pytest.fixture(autouse=True)
def _settings() -> Iterator[None]:
    with explainer_settings(ExplainerSettings(samples=SAMPLES, seed=SEED, batch=64)):
        yield


def _torchcam(extractor_class: type, model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor,
              **kwargs: object) -> torch.Tensor:
    """torchcam's unnormalised map (N, 1, h, w) of class target[i] for x[i], on the explained layer."""
    torch.manual_seed(SEED)  # torchcam draws its noise from the global generator
    with extractor_class(model, target_layer=explained_layer_path(model), **kwargs) as extractor:
        scores = model(x.clone())
        (cams,) = extractor(class_idx=target.tolist(), scores=scores, normalized=False)
    return cams.unsqueeze(1).detach()


def _assert_same(ours: torch.Tensor, theirs: torch.Tensor, tolerance: float = 1e-4) -> None:
    assert ours.shape == theirs.shape
    assert theirs.abs().max() > 0  # a non-blank map, so agreeing means something
    torch.testing.assert_close(ours, theirs, rtol=0, atol=tolerance * float(theirs.abs().max()) + 1e-6)


SAME_DEFINITION = {  # our name -> torchcam's extractor and its arguments
    "gradcam": (torchcam.GradCAM, {}),
    "xgradcam": (torchcam.XGradCAM, {}),
    "layercam": (torchcam.LayerCAM, {}),
    "scorecam": (torchcam.ScoreCAM, {"batch_size": 64}),
    "sscam": (torchcam.SSCAM, {"batch_size": 64, "num_samples": SAMPLES, "std": SSCAM_NOISE}),
    "iscam": (torchcam.ISCAM, {"batch_size": 64, "num_samples": SAMPLES}),
}


@pytest.mark.parametrize("name", list(SAME_DEFINITION))
def test_the_map_equals_torchcams(case: tuple[torch.nn.Module, torch.Tensor, torch.Tensor], name: str) -> None:
    model, x, target = case
    extractor_class, kwargs = SAME_DEFINITION[name]
    _assert_same(captum_maps(model, x, target, name), _torchcam(extractor_class, model, x, target, **kwargs))


def test_cam_is_torchcams_cam_relud_where_the_head_is_linear_after_pooling_and_refused_elsewhere(
    case: tuple[torch.nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, target = case
    cam = get_explainer("cam")
    if type(model).__name__ == "ConvNeXt":  # pooling, then LayerNorm, then the linear classifier
        assert "not a linear function of the average-pooled explained layer" in (cam.model_problem(model) or "")
        assert "has another head" in (cam.arch_problem("timm/convnext_atto") or "")
        with pytest.raises(ValueError, match="cam explainer cannot explain this model"):
            captum_maps(model, x, target, "cam")
        return
    assert cam.model_problem(model) is None
    head_name = next(name for name, module in model.named_modules() if module is classifier(model))
    theirs = _torchcam(torchcam.CAM, model, x, target, fc_layer=head_name)
    assert bool((theirs < 0).any())  # the ReLU makes a difference here
    _assert_same(captum_maps(model, x, target, "cam"), torch.relu(theirs))


def test_gradcampp_equals_torchcams_dividing_form_and_pins_its_undivided_gradcampp(
    case: tuple[torch.nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, target = case
    ours = captum_maps(model, x, target, "gradcampp")
    dividing = _torchcam(torchcam.SmoothGradCAMpp, model, x, target, num_samples=1, std=1e-7)
    _assert_same(ours, dividing, tolerance=1e-3)
    forward = tapped_forward(model, x.clone().requires_grad_(), explained_layer(model))
    grads = layer_gradients(forward.logits, forward.activations, target)
    undivided = weighted_map(forward.activations, (grads.pow(2) * torch.relu(grads)).sum(dim=(2, 3))).detach()
    _assert_same(undivided, _torchcam(torchcam.GradCAMpp, model, x, target))


def test_smoothgradcampp_equals_torchcams_as_the_noise_vanishes_and_pins_its_last_sample_form(
    case: tuple[torch.nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, target = case
    with explainer_settings(ExplainerSettings(samples=3, noise=1e-7, seed=SEED)):
        quiet = captum_maps(model, x, target, "smoothgradcampp")
    _assert_same(quiet, _torchcam(torchcam.SmoothGradCAMpp, model, x, target, num_samples=3, std=1e-7), 1e-3)

    noise, samples = 0.3, 3
    with explainer_settings(ExplainerSettings(samples=samples, noise=noise, seed=SEED)):
        ours = captum_maps(model, x, target, "smoothgradcampp")
    theirs = _torchcam(torchcam.SmoothGradCAMpp, model, x, target, num_samples=samples, std=noise)
    # torchcam's form, rebuilt from the same draws: moments averaged, but the last copy's A and relu(g)
    layer, generator = explained_layer(model), torch.Generator().manual_seed(SEED)
    clean = tapped_forward(model, x.clone(), layer).activations.detach()
    moments = [torch.zeros_like(clean) for _ in range(3)]
    for _ in range(samples):
        noisy = (x + noise * torch.randn(x.shape, generator=generator)).requires_grad_()
        last = tapped_forward(model, noisy, layer)
        grads = layer_gradients(last.logits, last.activations, target)
        moments = [m + grads.pow(p) for p, m in enumerate(moments, start=1)]
    alpha_weights = gradcampp_weights(clean, grads, moments[1] / samples, moments[2] / samples)
    _assert_same(weighted_map(last.activations.detach(), alpha_weights), theirs)
    assert not torch.allclose(ours, theirs, atol=1e-4 * float(theirs.abs().max()))  # the difference is real


def test_smoothgradcampp_repeats_with_its_seed_and_differs_with_another() -> None:
    """On ConvNeXt: behind a linear-after-pooling head (the ResNets) dY/dA does not depend on the input,
    so the noise changes nothing there and Smooth Grad-CAM++ is Grad-CAM++ (README)."""
    torch.manual_seed(0)
    model = build_model("timm/convnext_atto", num_classes=5, in_channels=3).eval()
    x, target = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    first, again = (captum_maps(model, x, target, "smoothgradcampp") for _ in range(2))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    with explainer_settings(ExplainerSettings(samples=SAMPLES, seed=SEED + 1)):
        other = captum_maps(model, x, target, "smoothgradcampp")
    assert not torch.equal(first, other)
