"""Which layer is explained: the one function that decides it for every model family.

Grad-CAM, attention transfer and FitNet hints all read the output of one module
through forward hooks, so models stay unmodified. `explained_layer(model)`
returns that module, always with a 4-D `(N, C, h, w)` output:

- CIFAR ResNet: `layer3`; the small CNN: `features.2` (the last conv stage).
- B-cos networks: their last conv stage (`net.layer4`/`net.layer3`, `net.features`); B-cos
  ViTs: the last encoder block's output tokens (no class token; the head averages all tokens,
  so every token's gradient is alive), reshaped to the patch grid.
- Vision transformers (timm `vit_*`/`deit_*`, torchvision `vit_*`): the last block's
  patch tokens as they enter its attention (its first LayerNorm, `blocks.11.norm1`),
  reshaped to the patch grid; class and distillation tokens are dropped. Not the block's
  output: after the last block only the class token reaches the head, so the gradient
  on the output's patch tokens is zero and Grad-CAM there would be blank.
- timm: the last entry of the model's `feature_info` (its last feature stage);
  channels-last stages (`NHWC`, e.g. Swin) are permuted to channels-first.
- Anything else (torchvision, and `torch.export` programs, unflattened into their original
  module hierarchy by core.models.exported): the last top-level stage whose output is 4-D and
  that holds parameters, found by one small eval-mode forward (at the input size a program was
  exported for); a model whose backbone is one `nn.Sequential` (`features`) is explained at
  that Sequential's last stage.

A module path (`"layer4"`, `"stages.3"`, `"blocks.11"`) set with `set_explained_layer`
(or `build_model(..., layer=...)`, from the spec's `teacher.layer` / `student.layer`)
overrides the choice. Token and channels-last outputs are presented through a
`LayerView`: a parameter-free module whose forward hook hands the next layer the very
same values, so captum's LayerGradCam, our hand-written Grad-CAM and the feature
terms all see a 4-D map of the same activation, with gradients flowing through it.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.models.bcos_family import explained_layer_path as bcos_layer_path
from core.models.bcos_family import is_bcos_model
from core.models.bcos_family import transformer_blocks as bcos_transformer_blocks
from core.models.cifar import CifarResNet, SmallCNN

PROBE_IMAGE_SIZE = 96  # the shape-finding forward: large enough for every torchvision classifier's stem
_STATE_KEY = "_explained_layer"  # kept in the model's __dict__: not a submodule, not in the state dict


class LayerNotFound(ValueError):
    """A module path that names no module of the model; the message lists close matches."""


class LayerView(nn.Module):
    """Presents a token (N, T, D) or channels-last (N, H, W, C) output as (N, C, h, w).

    Registered as a forward hook of the real layer: the hook runs this module on the
    layer's output and rebuilds the output from the 4-D view, so the view lies on the
    path to the logits (Grad-CAM differentiates it) and the values are unchanged.
    """

    def __init__(self, kind: str, prefix_tokens: int = 0) -> None:
        super().__init__()
        self.kind = kind  # "tokens" | "nhwc"
        self.prefix_tokens = prefix_tokens

    def forward(self, output: torch.Tensor) -> torch.Tensor:
        if self.kind == "nhwc":
            return output.permute(0, 3, 1, 2)
        patches = output[:, self.prefix_tokens :]
        side = math.isqrt(patches.shape[1])
        if side * side != patches.shape[1]:
            raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid")
        return patches.transpose(1, 2).reshape(output.shape[0], output.shape[2], side, side)

    def rebuild(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        """The forward hook: the layer's output, recomputed from its 4-D view."""
        grid = self(output)
        if self.kind == "nhwc":
            return grid.permute(0, 2, 3, 1)
        tokens = grid.flatten(2).transpose(1, 2)
        return torch.cat([output[:, : self.prefix_tokens], tokens], dim=1)


@dataclass
class _Explained:
    path: str
    module: nn.Module  # the layer itself, or its LayerView
    handle: Any = None  # the LayerView's hook handle


def explained_layer(model: nn.Module) -> nn.Module:
    """The module whose (N, C, h, w) output is explained: Grad-CAM's layer, AT's and FitNet's feature."""
    return _state(model).module


def explained_layer_path(model: nn.Module) -> str:
    """The module path of the explained layer, e.g. `"layer4"` (for reports and metrics)."""
    return _state(model).path


def set_explained_layer(model: nn.Module, path: str) -> None:
    """Explain the module at `path` instead of the automatic choice; LayerNotFound if there is none."""
    modules = dict(model.named_modules())
    if not path or path not in modules:
        matches = difflib.get_close_matches(path, [name for name in modules if name], n=5, cutoff=0.5)
        hint = f"; did you mean: {', '.join(matches)}" if matches else ""
        raise LayerNotFound(f"the model has no module '{path}'{hint}")
    _install(model, path)


def automatic_layer_path(model: nn.Module) -> str:
    """The automatic choice of the module docstring, by family."""
    if isinstance(model, CifarResNet):
        return "layer3"
    if isinstance(model, SmallCNN):
        return f"features.{len(model.features) - 1}"
    if is_bcos_model(model):
        return bcos_layer_path(model)
    tokens = _transformer_blocks(model)
    if tokens is not None:
        return tokens[0]
    feature_info = getattr(model, "feature_info", None)
    if isinstance(feature_info, list) and feature_info and isinstance(feature_info[-1], dict):
        path = str(feature_info[-1]["module"])
        modules = dict(model.named_modules())
        return path if path in modules else path.replace("_", ".")
    return _last_4d_stage(model)


def _state(model: nn.Module) -> _Explained:
    state = model.__dict__.get(_STATE_KEY)
    if state is None:
        state = _install(model, automatic_layer_path(model))
    return state


def _install(model: nn.Module, path: str) -> _Explained:
    old = model.__dict__.get(_STATE_KEY)
    if old is not None and old.handle is not None:
        old.handle.remove()
    layer = model.get_submodule(path)
    state = _Explained(path, layer)
    kind, prefix = _view_kind(model, path)
    if kind != "nchw":
        view = LayerView(kind, prefix)
        state = _Explained(path, view, layer.register_forward_hook(view.rebuild))
    model.__dict__[_STATE_KEY] = state
    return state


def _view_kind(model: nn.Module, path: str) -> tuple[str, int]:
    blocks = _transformer_blocks(model)
    if blocks is not None and path.startswith(blocks[1]):
        return "tokens", blocks[2]
    if str(getattr(model, "output_fmt", "NCHW")) in ("NHWC", "Format.NHWC"):
        return "nhwc", 0
    return "nchw", 0


def _transformer_blocks(model: nn.Module) -> tuple[str, str, int] | None:
    """(last block's path, the blocks' path prefix, prefix tokens) of a ViT-like model, else None."""
    if is_bcos_model(model):
        return bcos_transformer_blocks(model)
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and hasattr(model, "num_prefix_tokens") and hasattr(model, "patch_embed"):
        return f"blocks.{len(blocks) - 1}.norm1", "blocks.", int(model.num_prefix_tokens)
    encoder = getattr(model, "encoder", None)
    layers = getattr(encoder, "layers", None)
    if hasattr(model, "class_token") and isinstance(layers, nn.Sequential):  # torchvision VisionTransformer
        return f"encoder.layers.{list(layers.named_children())[-1][0]}.ln_1", "encoder.layers.", 1
    return None


def _holds_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _probe_shape(model: nn.Module) -> tuple[int, ...]:
    """The probe forward's input: the size an exported program was exported for (core.models.exported
    sets `example_input_shape`: its graph only takes that size), else 96 px at the first convolution's channels."""
    shape = getattr(model, "example_input_shape", None)
    if shape is not None:
        return tuple(shape)
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is None:
        raise ValueError(f"no convolution in {type(model).__name__}: give the explained layer's path")
    return (1, first_conv.in_channels, PROBE_IMAGE_SIZE, PROBE_IMAGE_SIZE)


def _last_4d_stage(model: nn.Module) -> str:
    """The last top-level child (in forward order) with parameters and a 4-D output, from one probe forward."""
    order: list[str] = []
    four_d: set[str] = set()

    def record(name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            order.append(name)
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                four_d.add(name)

        return hook

    children = dict(model.named_children())
    shape = _probe_shape(model)
    handles = [child.register_forward_hook(record(name)) for name, child in children.items()]
    was_training = model.training
    try:
        parameter = next(model.parameters())
        probe = torch.zeros(shape, device=parameter.device)
        model.eval()
        with torch.no_grad():
            model(probe)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    stages = [name for name in dict.fromkeys(order) if name in four_d and _holds_parameters(children[name])]
    if not stages:
        raise ValueError(f"no 4-D stage found in {type(model).__name__}: give the explained layer's path")
    name = stages[-1]
    first_with_parameters = next(n for n, child in children.items() if _holds_parameters(child))
    stage = children[name]
    if isinstance(stage, nn.Sequential) and name == first_with_parameters:
        inner = [n for n, child in stage.named_children() if _holds_parameters(child)]
        if inner:
            return f"{name}.{inner[-1]}"
    return name
