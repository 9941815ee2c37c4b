"""The `bcos` family: B-cos networks (Böhle et al., "B-cos Alignment for Inherently Interpretable CNNs and
Vision Transformers", TPAMI 2024) as the model family `bcos/<name>`, built from the
`bcos` package with random weights (its pretrained weights are never downloaded).

A B-cos network is dynamic linear: its logits are `W(x) x` for an input-dependent
matrix W(x), so the contribution map `W(x) * x` of a class sums exactly to that
class's logit, minus the constant the package's logit layer adds (`logit_bias`,
`-log(C - 1)` by default, a prior for its BCE training that does not depend on the
input and so is nobody's contribution).

The package's networks take the encoded image `[p, 1 - p]` (6 channels for RGB)
with pixels p in [0, 1]. This project's data are normalised per channel, so the
wrapper undoes the normalisation (`p = z * std + mean`, the job's own statistics,
set by `set_input_normalisation`) and encodes inside the model: data sets,
uploads and the spec stay as for every other model. The encoding is its own
module (`BcosClassifier.encoder`), so the `bcos` explainer can read the encoded
input through a forward hook and differentiate the logits with respect to it.

Names: every `bcos.models` entry point (random init, any class count, any input channels):

- CIFAR ResNets/ResNeXts/DenseNets: `bcos/cifar10_resnet20`, ..., `bcos/cifar10_resnext29_8x64d`,
  `bcos/cifar10_densenet100`, plus `bcos/cifar10_resnet<6n+2>` of any depth (e.g. `cifar10_resnet8`
  as a small student), built from the package's own CIFAR ResNet blocks;
- ImageNet-style ResNets/ResNeXts/Wide ResNets (`bcos/resnet18`, `bcos/resnext50_32x4d`, ...),
  DenseNets (`bcos/densenet121`, ...), ConvNeXts (`bcos/convnext_atto`, `bcos/convnext_tiny`, ...);
- VGGs (`bcos/vgg11`, `bcos/vgg11_bnu`, ...: B-cos convolutions, uncentred batch norm for `_bnu`);
- ViTs, configured as the package's own B-cos ViTs (B-cos linear layers, detachable bias-free layer
  norms, no activation, a logit layer after the head): `bcos/simple_vit_ti_patch16_224`, ... take
  images whose side is a multiple of the patch size (16); `bcos/vitc_ti_patch1_14`, ... (a
  convolutional stem that halves the side four times, then 1x1 patches) take any size. Their
  sinusoidal position embedding is added to the tokens: a constant, like the logit bias, so the
  contribution maps of a ViT sum to its logit up to that constant's share, not exactly.

Which module Grad-CAM explains (`explained_layer_path`): the last conv stage of the CNNs
(`net.layer4`/`net.layer3`, `net.features`), the last encoder block's output tokens of the
ViTs (all tokens reach the mean-pooled head), viewed as the patch grid by core.models.layers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache

import torch
from torch import nn

PREFIX = "bcos/"
_FAMILIES = ("resnet", "densenet", "convnext", "vgg", "vit")  # bcos.models modules with an `__all__` of entry points
_CIFAR_RESNET = re.compile(r"cifar10_resnet(\d+)")
_VIT_PATCH = re.compile(r"simple_vit_\w+_patch(\d+)_\d+")  # plain ViTs: the side must be a multiple of the patch


class InverseEncoding(nn.Module):
    """`[p, 1 - p]` of the pixels `p = z * std + mean` of a normalised input z.

    The statistics are persistent buffers, so a saved B-cos student carries the
    normalisation it was trained with; a job sets its own data's statistics after
    loading weights. In explanation mode the encoded tensor is made to require
    grad (when autograd is on), so the logits can be differentiated with respect
    to it even when the caller's input does not require grad.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("std", torch.ones(1, in_channels, 1, 1))
        self.explaining = False

    def set_explanation_mode(self, activate: bool = True) -> None:
        self.explaining = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x * self.std + self.mean
        encoded = torch.cat([pixels, 1.0 - pixels], dim=1)
        if self.explaining and torch.is_grad_enabled() and not encoded.requires_grad:
            encoded.requires_grad_()
        return encoded


class BcosClassifier(nn.Module):
    """A `bcos` package network behind the input encoding; takes the same normalised input as any model."""

    def __init__(self, net: nn.Module, in_channels: int) -> None:
        super().__init__()
        self.encoder = InverseEncoding(in_channels)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.encoder(x))

    @property
    def logit_bias(self) -> float:
        """The constant the logit layer adds after the dynamic linear part (0 if none)."""
        return float(getattr(self._logit_layer(), "logit_bias", None) or 0.0)

    @property
    def logit_scale(self) -> float:
        """The logit layer divides by its temperature: a constant factor, already part of W(x)."""
        return 1.0 / float(getattr(self._logit_layer(), "logit_temperature", None) or 1.0)

    def _logit_layer(self) -> nn.Module | None:
        from bcos.modules import LogitLayer

        return next((module for module in self.net.modules() if isinstance(module, LogitLayer)), None)

    def set_explanation_mode(self, activate: bool) -> None:
        """Detach the dynamic weights (B-cos scaling, norms) so gradients give W(x), not its derivative."""
        for module in self.modules():
            if module is not self and hasattr(module, "set_explanation_mode"):
                module.set_explanation_mode(activate)

    @contextmanager
    def explanation_mode(self) -> Iterator[None]:
        self.set_explanation_mode(True)
        try:
            yield
        finally:
            self.set_explanation_mode(False)

    def set_input_normalisation(self, mean: list[float], std: list[float]) -> None:
        """Use these per-channel statistics to turn the (normalised) input back into pixels."""
        channels = self.encoder.mean.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"expected {channels} channel statistics, got {len(mean)} and {len(std)}")
        device = self.encoder.mean.device
        self.encoder.mean.copy_(torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1))
        self.encoder.std.copy_(torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1))


def is_bcos_arch(arch: str) -> bool:
    return arch.startswith(PREFIX)


def is_bcos_model(model: nn.Module) -> bool:
    return isinstance(model, BcosClassifier)


@cache
def _entry_points() -> dict[str, Callable[..., nn.Module]]:
    import importlib

    points: dict[str, Callable[..., nn.Module]] = {}
    for family in _FAMILIES:
        module = importlib.import_module(f"bcos.models.{family}")
        for name in module.__all__:
            entry = getattr(module, name)
            if name[0].islower() and callable(entry):
                points[name] = entry
    return points


def names() -> list[str]:
    """The model names this family builds (CIFAR ResNets of other depths than the package's come on top)."""
    return sorted(_entry_points())


def is_model(name: str) -> bool:
    match = _CIFAR_RESNET.fullmatch(name)
    if match:
        depth = int(match.group(1))
        return depth >= 8 and (depth - 2) % 6 == 0
    return name in _entry_points()


def _cifar_resnet(depth: int, num_classes: int, in_chans: int) -> nn.Module:
    from bcos.models.resnet import BasicBlock, BcosResNet

    blocks = (depth - 2) // 6
    return BcosResNet(BasicBlock, [blocks] * 3, num_classes=num_classes, in_chans=in_chans, inplanes=16,
                      small_inputs=True)


def _vgg(entry: Callable[..., nn.Module], name: str, num_classes: int, in_chans: int) -> nn.Module:
    """The package's VGG entry points leave the conv (and, for `_bnu`, the norm) layer to the caller."""
    from bcos.models.vgg import DEFAULT_NORM_LAYER
    from bcos.modules import BcosConv2d

    norm = {"norm_layer": DEFAULT_NORM_LAYER} if name.endswith("_bnu") else {}
    return entry(num_classes=num_classes, in_chans=in_chans, conv_layer=BcosConv2d, **norm)


def _vit(entry: Callable[..., nn.Module], num_classes: int, in_chans: int) -> nn.Module:
    """A B-cos ViT as the package configures its own (`bcos.experiments.ImageNet.vit_final`), logit layer included.

    The entry points fix an image size, but the network only uses it to check the patch grid
    (the position embedding is computed from the input): any side the patches tile works.
    """
    import warnings

    from bcos.modules import BcosConv2d, BcosLinear, DetachableGNLayerNorm2d, LogitLayer, norms
    from bcos.modules.common import BcosSequential

    with warnings.catch_warnings():  # "use the pretrained entry points": those would download weights
        warnings.simplefilter("ignore")
        net = entry(num_classes=num_classes, channels=in_chans, linear_layer=BcosLinear, conv2d_layer=BcosConv2d,
                    norm_layer=norms.NoBias(norms.DetachableLayerNorm), act_layer=nn.Identity,
                    norm2d_layer=norms.NoBias(DetachableGNLayerNorm2d))
    return BcosSequential(net, LogitLayer(logit_bias=-math.log(num_classes - 1)))


def _network(name: str, num_classes: int, in_chans: int) -> nn.Module:
    entry = _entry_points().get(name)
    if entry is None:
        match = _CIFAR_RESNET.fullmatch(name)
        assert match is not None
        return _cifar_resnet(int(match.group(1)), num_classes, in_chans)
    family = entry.__module__.rpartition(".")[2]
    if family == "vgg":
        return _vgg(entry, name, num_classes, in_chans)
    if family == "vit":
        return _vit(entry, num_classes, in_chans)
    return entry(num_classes=num_classes, in_chans=in_chans)


def build(name: str, num_classes: int, in_channels: int, image_size: int | None = None) -> BcosClassifier:
    """`bcos/<name>` with `num_classes` outputs for `in_channels`-channel images (random init).

    `image_size` is not needed: every network here is built for any size it can take
    (`input_problem` says which sizes a network cannot take).
    """
    if not is_model(name):
        raise KeyError(f"unknown architecture '{PREFIX}{name}'")
    if num_classes < 2:
        raise ValueError("B-cos models need at least 2 classes")
    return BcosClassifier(_network(name, num_classes, 2 * in_channels), in_channels)


def input_problem(name: str, image_size: int) -> str | None:
    """Why `bcos/<name>` cannot take `image_size` px images, or None when it can (plain ViTs: whole patches)."""
    match = _VIT_PATCH.fullmatch(name)
    if match and image_size % int(match.group(1)):
        patch = int(match.group(1))
        return (f"{PREFIX}{name} cuts images into {patch}x{patch} patches: image_size must be a multiple of "
                f"{patch}, not {image_size}")
    return None


def explained_layer_path(model: BcosClassifier) -> str:
    """Grad-CAM's layer of a B-cos network: its last conv stage, before the 1x1 B-cos classifier.

    ViTs: the last encoder block, whose output tokens all reach the mean-pooled head (see
    `transformer_blocks`, which makes it a 4-D patch grid).
    """
    blocks = transformer_blocks(model)
    if blocks is not None:
        return blocks[0]
    net = model.net
    if getattr(net, "layer4", None) is not None:
        return "net.layer4"
    if hasattr(net, "layer3"):
        return "net.layer3"
    if hasattr(net, "features"):  # DenseNet, ConvNeXt, VGG
        return "net.features"
    raise ValueError(f"no explained layer known for {type(net).__name__}")


def transformer_blocks(model: nn.Module) -> tuple[str, str, int] | None:
    """(last encoder block's path, the blocks' path prefix, prefix tokens) of a B-cos ViT, else None.

    The package's SimpleViT has no class token (0 prefix tokens): its head averages all tokens.
    """
    if not is_bcos_model(model):
        return None
    for path, module in model.named_modules():
        transformer = getattr(module, "transformer", None)
        if hasattr(module, "to_patch_embedding") and isinstance(transformer, nn.Sequential) and len(transformer):
            prefix = f"{path}.transformer." if path else "transformer."
            return prefix + list(transformer.named_children())[-1][0], prefix, 0
    return None


def set_input_normalisation(model: nn.Module, mean: list[float], std: list[float]) -> None:
    """Tell a model that encodes its own input (B-cos) how the job's data were normalised; others ignore it."""
    if is_bcos_model(model):
        model.set_input_normalisation(mean, std)
