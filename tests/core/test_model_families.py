"""Any timm/torchvision classifier by name, its explained layer found per family, weights as people save them."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch
from captum.attr import LayerGradCam
from pydantic import ValidationError

from core.explain.reference import captum_maps
from core.errors import WeightsError
from core.explain import FeatureTap, gradcam_maps
from core.models import (
    LayerNotFound,
    build_model,
    explained_layer,
    explained_layer_path,
    load_weights,
    read_state_dict,
    weights_dims,
)
from core.spec import JobSpec

# (architecture, input size, the layer the family rule must pick)
FAMILIES = [
    ("resnet8", 16, "layer3"),
    ("torchvision/resnet18", 32, "layer4"),
    ("torchvision/mobilenet_v3_small", 32, "features.12"),
    ("timm/convnext_atto", 64, "stages.3"),
    ("timm/efficientnet_b0", 64, "blocks.6"),
]


def _batch(channels: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(3, channels, size, size, generator=generator), torch.tensor([0, 1, 2])


@pytest.mark.parametrize(("arch", "size", "layer"), FAMILIES)
def test_each_family_explains_its_last_stage_and_our_gradcam_equals_captum(arch: str, size: int, layer: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, 5, 3, image_size=size).eval()
    x, target = _batch(3, size)

    assert explained_layer_path(model) == layer
    assert explained_layer(model) is model.get_submodule(layer)
    tap = FeatureTap(explained_layer(model))
    ours = gradcam_maps(model(x), tap.take(), target)
    tap.remove()
    reference = LayerGradCam(model, model.get_submodule(layer)).attribute(x, target=target, relu_attributions=True)
    assert ours.dim() == 4 and ours.shape == reference.shape
    assert reference.abs().max() > 0  # a non-trivial map, so the comparison means something
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)


def test_vit_is_explained_on_the_last_blocks_patch_tokens_as_a_grid_without_the_class_token() -> None:
    torch.manual_seed(0)
    model = build_model("timm/vit_tiny_patch16_224", 5, 3, image_size=64).eval()
    x, target = _batch(3, 64, seed=1)
    with torch.no_grad():
        plain_logits = model(x)  # before the view hook exists

    assert explained_layer_path(model) == "blocks.11.norm1"
    maps = captum_maps(model, x, target)  # captum LayerGradCam on the 4-D view of the tokens

    # Independent reference: the tokens entering the last block, class token dropped, 4x4 grid, Grad-CAM by hand.
    with torch.no_grad():
        assert torch.equal(model(x), plain_logits)  # the view hook hands the next layer the same values
    tokens: list[torch.Tensor] = []
    handle = model.blocks[-1].norm1.register_forward_hook(lambda m, i, o: tokens.append(o))
    logits = model(x)
    handle.remove()
    (grads,) = torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), tokens[0])
    grid = lambda t: t[:, 1:].transpose(1, 2).reshape(3, 192, 4, 4)  # noqa: E731
    reference = torch.relu((grid(grads).mean(dim=(2, 3), keepdim=True) * grid(tokens[0])).sum(1, keepdim=True))
    assert maps.shape == (3, 1, 4, 4) and reference.abs().max() > 0
    torch.testing.assert_close(maps, reference.detach(), atol=1e-5, rtol=1e-4)


def test_the_explained_layer_can_be_overridden_by_module_path() -> None:
    model = build_model("torchvision/resnet18", 5, 3, layer="layer3")
    assert explained_layer_path(model) == "layer3" and explained_layer(model) is model.layer3
    with pytest.raises(LayerNotFound, match="layer4"):
        build_model("torchvision/resnet18", 5, 3, layer="layer5")


def test_an_unknown_model_name_fails_validation_naming_the_field_with_close_matches() -> None:
    with pytest.raises(ValidationError) as error:
        JobSpec.model_validate({"dataset": {"name": "digits"}, "teacher": {"arch": "timm/convnext_tinyy"}})
    problem = error.value.errors()[0]
    assert problem["loc"] == ("teacher", "arch") and "timm/convnext_tiny" in problem["msg"]
    spec = JobSpec.model_validate({"dataset": {"name": "digits"}, "teacher": {"arch": "torchvision/resnet50"},
                                   "student": {"arch": "timm/mobilenetv3_small_050", "layer": "blocks.4"}})
    assert spec.student.layer == "blocks.4"


def _saved(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_pytorch_state_dicts_load_weights_only_with_common_wrappers(tmp_path: Path) -> None:
    model = build_model("resnet8", 7, 1)
    state = model.state_dict()
    files = [
        _saved(state, tmp_path / "plain.pth"),
        _saved({"state_dict": state, "epoch": 3}, tmp_path / "lightning.pt"),
        _saved({"model": {f"module.{k}": v for k, v in state.items()}, "optimizer": {}}, tmp_path / "ddp.pth"),
    ]
    for file in files:
        loaded = read_state_dict(file)
        assert loaded.keys() == state.keys()
        fresh = load_weights(build_model("resnet8", 7, 1), file)
        assert all(torch.equal(a, b) for a, b in zip(state.values(), fresh.state_dict().values()))
    assert weights_dims("resnet8", read_state_dict(files[0])) == (7, 1)


class _Payload:
    def __reduce__(self):  # would create a marker file if unpickled
        return (Path.touch, (Path(self.marker),))


def test_a_pth_that_is_not_weights_only_or_is_truncated_is_a_weights_error(tmp_path: Path) -> None:
    payload = _Payload()
    payload.marker = str(tmp_path / "pwned")
    _saved({"state_dict": payload}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="weights-only") as error:
        read_state_dict(tmp_path / "evil.pth")
    assert error.value.field == "teacher.weights" and not (tmp_path / "pwned").exists()
    (tmp_path / "legacy.pt").write_bytes(pickle.dumps(payload))
    with pytest.raises(WeightsError):
        read_state_dict(tmp_path / "legacy.pt")
    assert not (tmp_path / "pwned").exists()

    buffer = io.BytesIO()
    torch.save(build_model("cnn", 3, 1).state_dict(), buffer)
    (tmp_path / "cut.pth").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(WeightsError, match="truncated"):
        read_state_dict(tmp_path / "cut.pth")
    (tmp_path / "ok.pth").write_bytes(buffer.getvalue())
    with pytest.raises(WeightsError, match="do not fit"):
        load_weights(build_model("cnn", 4, 1), tmp_path / "ok.pth")
