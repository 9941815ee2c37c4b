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

Names: every `bcos.models` entry point for ResNets, ResNeXts, DenseNets, ConvNeXts
(`bcos/resnet18`, `bcos/cifar10_resnet20`, `bcos/densenet121`, ...), plus
`bcos/cifar10_resnet<6n+2>` of any depth (e.g. `cifar10_resnet8` as a small
student), built from the package's own CIFAR ResNet blocks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache

import torch
from torch import nn

PREFIX = "bcos/"
_FAMILIES = ("resnet", "densenet", "convnext")  # bcos.models modules with an `__all__` of entry points
_CIFAR_RESNET = re.compile(r"cifar10_resnet(\d+)")


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
        layer = getattr(self.net, "logit_layer", None)
        return float(getattr(layer, "logit_bias", None) or 0.0)

    @property
    def logit_scale(self) -> float:
        """The logit layer divides by its temperature: a constant factor, already part of W(x)."""
        layer = getattr(self.net, "logit_layer", None)
        return 1.0 / float(getattr(layer, "logit_temperature", None) or 1.0)

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


def build(name: str, num_classes: int, in_channels: int, image_size: int | None = None) -> BcosClassifier:
    """`bcos/<name>` with `num_classes` outputs for `in_channels`-channel images (random init; any image size)."""
    if not is_model(name):
        raise KeyError(f"unknown architecture '{PREFIX}{name}'")
    if num_classes < 2:
        raise ValueError("B-cos models need at least 2 classes")
    entry = _entry_points().get(name)
    if entry is not None:
        net = entry(num_classes=num_classes, in_chans=2 * in_channels)
    else:
        match = _CIFAR_RESNET.fullmatch(name)
        assert match is not None
        net = _cifar_resnet(int(match.group(1)), num_classes, 2 * in_channels)
    return BcosClassifier(net, in_channels)


def explained_layer_path(model: BcosClassifier) -> str:
    """Grad-CAM's layer of a B-cos network: its last conv stage, before the 1x1 B-cos classifier."""
    net = model.net
    if getattr(net, "layer4", None) is not None:
        return "net.layer4"
    if hasattr(net, "layer3"):
        return "net.layer3"
    if hasattr(net, "features"):  # DenseNet, ConvNeXt
        return "net.features"
    raise ValueError(f"no explained layer known for {type(net).__name__}")


def explainer_mismatch(explainer: str, arch: str) -> str | None:
    """Why `explainer` cannot explain `arch`, or None if it can: the one rule of which explainer fits which model.

    `bcos` reads the dynamic linear map W(x) that only B-cos networks have; Grad-CAM and the
    gradient explainers apply to every model here, B-cos ones included.
    """
    if explainer == "bcos" and not is_bcos_arch(arch):
        return f"the bcos explainer explains only B-cos models (bcos/<name>), not '{arch}'"
    return None


def set_input_normalisation(model: nn.Module, mean: list[float], std: list[float]) -> None:
    """Tell a model that encodes its own input (B-cos) how the job's data were normalised; others ignore it."""
    if is_bcos_model(model):
        model.set_input_normalisation(mean, std)
