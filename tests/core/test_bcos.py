"""B-cos networks (`bcos/<name>`) and their explainer: contribution maps W(x)·x that sum to the logit.

The exactness test is what makes these maps worth distilling: a B-cos network is dynamic
linear, so with its dynamic weights detached (explanation mode) the contributions of all
input pixels of class c add up to logit c, minus the logit layer's constant bias (a prior
for the package's BCE training, added after the linear part, so nobody's contribution).
"""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from core.explain.reference import captum_maps
from core.models.compat import DatasetShape, WeightsShape, fit_problems, weights_shape
from core.data import DataBundle
from core.explain import FeatureTap, bcos_maps, explainer_problem, explaining_forwards, map_source
from core.models import build_model, explained_layer, explained_layer_path, input_problem, set_input_normalisation
from core.spec import JobSpec
from core.terms import cross_entropy_only
from core.train.loop import DistillationObjective, OptimConfig, train

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bcos_teacher(digits16: DataBundle) -> torch.nn.Module:
    """A B-cos ResNet-8 trained three epochs on digits: logits far from zero, so exactness means something."""
    torch.manual_seed(0)
    model = build_model("bcos/cifar10_resnet8", digits16.num_classes, digits16.in_channels)
    set_input_normalisation(model, digits16.mean, digits16.std)
    objective = DistillationObjective(model, cross_entropy_only(), digits16, CPU)
    train(model, objective, digits16.train_x, digits16.train_y,
          OptimConfig(epochs=3, batch_size=32, optimizer="adam", lr=1e-2, weight_decay=0.0, seed=0),
          stage="training_teacher", device=CPU)
    objective.close()
    return model.eval()


@pytest.mark.parametrize(("arch", "params"), [("bcos/cifar10_resnet20", 271_920), ("bcos/cifar10_resnet8", 77_936)])
# 271,920 = bcos.models.resnet.cifar10_resnet20(num_classes=7, in_chans=6); resnet8 is the same blocks, n=1
def test_bcos_cifar_resnets_build_with_any_class_count(arch: str, params: int) -> None:
    model = build_model(arch, 7, 3)

    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 7)
    assert model.net.conv1.linear.in_channels == 6  # the image and its inverse
    assert sum(p.numel() for p in model.parameters()) == params  # 7 classes; resnet20 = the package's own net


def test_imagenet_style_bcos_networks_build_for_small_grey_images() -> None:
    model = build_model("bcos/convnext_atto", 3, 1).eval()

    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 3)
    assert isinstance(explained_layer(model), torch.nn.Module)


def test_imagenet_style_resnet_contributions_sum_to_the_logit_minus_the_bias() -> None:
    """The exactness property beyond the CIFAR nets: an ImageNet-style stem (7x7/2 conv, pooling), 4 stages."""
    torch.manual_seed(0)
    model = build_model("bcos/resnet18", 5, 3).eval()
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        logits = model(x)
    linear = logits - model.logit_bias
    assert linear.abs().max() > 0.1  # the check below is not about near-zero numbers

    for target in range(5):
        maps = captum_maps(model, x, torch.full((3,), target), "bcos")
        assert maps.shape == (3, 1, 16, 16)
        torch.testing.assert_close(maps.flatten(1).sum(dim=1), linear[:, target], atol=1e-4, rtol=0)


def test_bcos_vit_builds_for_any_class_count_and_gradcam_explains_its_patch_grid() -> None:
    torch.manual_seed(0)
    model = build_model("bcos/simple_vit_ti_patch16_224", 4, 3).eval()  # 32 px: a 2x2 grid of 16 px patches
    x = torch.rand(2, 3, 32, 32)
    classes = model(x).argmax(dim=1)

    assert model(x).shape == (2, 4)
    assert explained_layer_path(model) == "net.0.transformer.encoder_11"  # the last block's output tokens
    gradcam = captum_maps(model, x, classes, "gradcam")
    assert gradcam.shape == (2, 1, 2, 2) and float(gradcam.sum()) > 0
    contributions = captum_maps(model, x, classes, "bcos")
    assert contributions.shape == (2, 1, 32, 32) and float(contributions.abs().sum()) > 0


@pytest.mark.parametrize(("arch", "size", "problem"), [
    ("bcos/simple_vit_ti_patch16_224", 20, "multiple of 16"),
    ("bcos/simple_vit_ti_patch16_224", 32, None),
    ("bcos/vitc_ti_patch1_14", 20, None),  # a conv stem first: any size
    ("bcos/resnet18", 20, None),
])
def test_which_image_sizes_a_bcos_network_takes(arch: str, size: int, problem: str | None) -> None:
    found = input_problem(arch, size)

    assert (found is None) if problem is None else (problem in found)


def test_a_plain_bcos_vit_with_an_image_size_it_cannot_tile_is_refused_naming_the_size() -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate({"dataset": {"name": "digits", "image_size": 20},
                                "student": {"arch": "bcos/simple_vit_ti_patch16_224"}})

    assert caught.value.errors()[0]["loc"] == ("dataset", "image_size")


def test_unknown_bcos_name_is_refused() -> None:
    with pytest.raises(KeyError, match="bcos/resnet9"):
        build_model("bcos/resnet9", 10, 3)


def test_encoder_turns_the_normalised_input_into_pixels_and_their_inverse(digits16: DataBundle) -> None:
    model = build_model("bcos/cifar10_resnet8", digits16.num_classes, digits16.in_channels)
    set_input_normalisation(model, digits16.mean, digits16.std)
    x = digits16.test_x[:4]

    encoded = model.encoder(x)

    pixels = digits16.denormalise(x)  # clamps to [0, 1]; digits pixels are in range already
    torch.testing.assert_close(encoded[:, :1], pixels, atol=1e-5, rtol=0)
    torch.testing.assert_close(encoded[:, 1:], 1 - pixels, atol=1e-5, rtol=0)


def test_contribution_map_of_every_class_sums_to_its_logit_minus_the_bias(
    bcos_teacher: torch.nn.Module, digits16: DataBundle
) -> None:
    x = digits16.test_x[:8]
    with torch.no_grad():
        logits = bcos_teacher(x)
    assert logits.abs().max() > 0.5  # trained: the check below is not about near-zero numbers

    for target in range(digits16.num_classes):
        classes = torch.full((len(x),), target)
        maps = captum_maps(bcos_teacher, x, classes, "bcos")
        assert maps.shape == (8, 1, 16, 16)
        sums = maps.flatten(1).sum(dim=1)
        torch.testing.assert_close(sums, logits[:, target] - bcos_teacher.logit_bias, atol=1e-4, rtol=0)


def test_without_explanation_mode_the_input_gradient_is_not_the_linear_map(
    bcos_teacher: torch.nn.Module, digits16: DataBundle
) -> None:
    """The detaching matters: differentiating through the dynamic weights breaks the sum."""
    x = digits16.test_x[:8]
    tap = FeatureTap(bcos_teacher.encoder)
    logits = bcos_teacher(x.clone().requires_grad_())
    maps = bcos_maps(logits, tap.take(), logits.argmax(dim=1))
    tap.remove()

    gap = (maps.flatten(1).sum(dim=1) - (logits.max(dim=1).values - bcos_teacher.logit_bias)).abs()
    assert gap.max() > 1e-2


def test_training_map_equals_captums_and_carries_a_gradient_for_the_student(
    bcos_teacher: torch.nn.Module, digits16: DataBundle
) -> None:
    student = build_model("bcos/cifar10_resnet8", digits16.num_classes, digits16.in_channels)
    set_input_normalisation(student, digits16.mean, digits16.std)
    student.eval()
    x = digits16.train_x[:6]
    classes = bcos_teacher(x).argmax(dim=1)
    tap = FeatureTap(map_source(student, "bcos"))

    with explaining_forwards("bcos", student):
        logits = student(x)  # the input does not require grad: the encoder makes its output require it
        maps = bcos_maps(logits, tap.take(), classes, create_graph=True)
    tap.remove()

    torch.testing.assert_close(maps.detach(), captum_maps(student, x, classes, "bcos"), atol=1e-5, rtol=1e-4)
    target = captum_maps(bcos_teacher, x, classes, "bcos")
    loss = 1 - torch.nn.functional.cosine_similarity(maps.flatten(1), target.flatten(1)).mean()
    loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_gradcam_still_explains_bcos_models(bcos_teacher: torch.nn.Module, digits16: DataBundle) -> None:
    x = digits16.test_x[:4]
    maps = captum_maps(bcos_teacher, x, bcos_teacher(x).argmax(dim=1), "gradcam")

    assert maps.shape[:2] == (4, 1) and bool((maps >= 0).all()) and float(maps.sum()) > 0


def test_bcos_explainer_refuses_other_models(digits16: DataBundle) -> None:
    model = build_model("cnn", digits16.num_classes, digits16.in_channels)

    with pytest.raises(ValueError, match="only B-cos"):
        captum_maps(model, digits16.test_x[:2], torch.zeros(2, dtype=torch.long), "bcos")
    with pytest.raises(ValueError, match="only B-cos"):
        map_source(model, "bcos")  # what training asks before it taps the encoder


def test_the_bcos_explainer_states_which_architectures_it_fits() -> None:
    """Spec validation asks the explainer; the words are the API's 422 text."""
    assert explainer_problem("bcos", "resnet8") == (
        "the bcos explainer explains only B-cos models (bcos/<name>), not 'resnet8'")
    assert explainer_problem("bcos", "bcos/cifar10_resnet8") is None
    assert explainer_problem("gradcam", "bcos/cifar10_resnet8") is None


@pytest.mark.parametrize(
    ("teacher", "student"), [("resnet20", "resnet8"), ("bcos/cifar10_resnet20", "cnn"), ("cnn", "bcos/cifar10_resnet8")]
)
def test_spec_with_the_bcos_explainer_needs_bcos_teacher_and_student(teacher: str, student: str) -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate({"dataset": {"name": "digits"}, "method": "e2kd-bcos",
                                "teacher": {"arch": teacher}, "student": {"arch": student}})

    assert caught.value.errors()[0]["loc"] == ("loss", "explanation", "explainer")


def test_e2kd_bcos_preset_is_the_papers_setting() -> None:
    spec = JobSpec.model_validate({"dataset": {"name": "digits"}, "method": "e2kd-bcos",
                                   "teacher": {"arch": "bcos/cifar10_resnet20"},
                                   "student": {"arch": "bcos/cifar10_resnet8"}})

    assert (spec.loss.ce, spec.loss.kd, spec.loss.temperature) == (0.0, 1.0, 1.0)
    assert (spec.loss.explanation.explainer, spec.loss.explanation.weight) == ("bcos", 1.0)


def _bcos_job(method: str, student: str, **loss: object) -> JobSpec:
    return JobSpec.model_validate({
        "name": f"bcos-{method}",
        "dataset": {"name": "digits", "image_size": 16, "shots_per_class": 10},
        "teacher": {"arch": "bcos/cifar10_resnet8", "epochs": 2},
        "student": {"arch": student},
        "method": method,
        "loss": loss,
        "training": {"epochs": 1, "batch_size": 32, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
                     "seed": 0},
        "report": {"heatmaps": 2, "latency_runs": 1},
    })


def test_bcos_teacher_to_bcos_student_with_e2kd_bcos_runs(tmp_path) -> None:
    from core.run import run_distillation

    result = run_distillation(_bcos_job("e2kd-bcos", "bcos/cifar10_resnet8"), tmp_path)

    assert result["explainer"] == "bcos"
    assert -1.0 <= result["explanation_cosine"] <= 1.0 and 0.0 <= result["explanation_cosine_gradcam"] <= 1.0
    assert result["history"]["student"][1]["losses"]["explanation"] > 0
    # The job's heatmaps show its B-cos maps, then Grad-CAM beside them (16 px -> 128 px panels).
    assert set(result["gallery"][0]["cosines"]) == {"bcos", "gradcam"}
    from PIL import Image

    from core.publish.heatmaps import PANEL_GAP_PX

    with Image.open(tmp_path / result["gallery"][0]["file"]) as tile:
        assert tile.width == 5 * 128 + 4 * PANEL_GAP_PX and tile.text["explainers"] == "bcos, gradcam"
    assert "teacher B-cos | student B-cos | teacher Grad-CAM" in (tmp_path / "report.html").read_text()
    student = build_model("bcos/cifar10_resnet8", 10, 1)
    from core.models import load_weights

    load_weights(student, tmp_path / "student.safetensors")  # the encoder's normalisation travels with it
    assert float(student.encoder.std.flatten()[0]) != 1.0


def test_bcos_teacher_to_standard_student_with_gradcam_runs(tmp_path) -> None:
    from core.run import run_distillation

    result = run_distillation(_bcos_job("e2kd", "resnet8"), tmp_path)

    assert result["explainer"] == "gradcam"
    assert result["explanation_cosine"] == result["explanation_cosine_gradcam"]
    assert result["history"]["student"][1]["losses"]["explanation"] > 0


@pytest.mark.parametrize("arch", [
    "bcos/cifar10_resnet8", "bcos/resnet18", "bcos/cifar10_resnext29_8x64d", "bcos/densenet121",
    "bcos/cifar10_densenet100", "bcos/convnext_atto", "bcos/vgg11_bnu", "bcos/simple_vit_ti_patch16_224",
    "bcos/vitc_ti_patch1_14",
])
def test_class_count_and_channels_read_from_the_weights_of_every_bcos_family(arch: str) -> None:
    """Heads here are 1x1 B-cos convolutions, conv stacks (VGG) or B-cos linear layers (ViT): one rule reads all."""
    with torch.device("meta"):  # shapes only: nothing allocated (VGG-11 alone is 129M parameters)
        state = build_model(arch, 13, 3).state_dict()

    assert weights_shape(state, arch) == WeightsShape(arch, 13, 3)
    assert fit_problems(weights_shape(state, arch), dataset=DatasetShape(10, 3)) == [
        "it has 13 classes but the dataset has 10"
    ]
