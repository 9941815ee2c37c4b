"""The `cifar` family: CIFAR-style ResNets (He et al., 2016) and a small CNN, by short name.

These are the models small images (8-64 px) want: a 3x3 stem without pooling, so
an 8x8 digit still has a spatial map at the last stage. Every builder takes
`(num_classes, in_channels)`, so any dataset fits any architecture.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module_hooks


def observed(module: nn.Module) -> bool:
    """Whether a hook may hold on to `module`'s output: forward or backward hooks on it, or global ones.

    Such an output must not be overwritten in place. A Grad-CAM or feature tap on a layer inside
    a block (`teacher.layer: "layer3.0.bn2"`) keeps a reference to that tensor; an in-place ReLU
    or residual add after it would silently turn the tap into the block's output (and a full
    backward hook's output view may not be modified in place at all).
    """
    return bool(
        module._forward_hooks or module._backward_hooks or module._backward_pre_hooks
        or getattr(_module_hooks, "_global_forward_hooks", None)
        or getattr(_module_hooks, "_global_backward_hooks", None)
        or getattr(_module_hooks, "_global_backward_pre_hooks", None)
    )


def relu_after(module: nn.Module, x: torch.Tensor, inplace: bool) -> torch.Tensor:
    """relu(x), where x is `module`'s output: in place (no new 4-D tensor) when nothing else can see x."""
    return F.relu_(x) if inplace and not observed(module) else F.relu(x)


class BasicBlock(nn.Module):
    """The 3x3-3x3 residual block of He et al. (2016), option-B (1x1 conv) shortcut.

    `inplace` (the default) applies the ReLUs and the residual add in place on the batch-norm
    outputs, as torchvision's block does: the same values and gradients with two fewer
    activation-sized allocations per block (autograd still has every tensor it saved, since
    neither batch norm nor the add needs its output for the backward). An output some hook
    holds is never overwritten (`observed`); `inplace = False` is the out-of-place reference.
    """

    inplace = True

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = relu_after(self.bn1, self.bn1(self.conv1(x)), self.inplace)
        out = self.bn2(self.conv2(out))
        shortcut = self.shortcut(x)
        if self.inplace and not observed(self.bn2):
            return F.relu_(out.add_(shortcut))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: three stages of n blocks at widths w, 2w, 4w.

    `set_inplace(model, False)` turns the in-place ReLUs and adds off (the reference forward).
    """

    inplace = True

    def __init__(self, depth: int, num_classes: int, in_channels: int, width: int = 16) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._stage(width, width, blocks, 1)
        self.layer2 = self._stage(width, 2 * width, blocks, 2)
        self.layer3 = self._stage(2 * width, 4 * width, blocks, 2)
        self.fc = nn.Linear(4 * width, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = relu_after(self.bn1, self.bn1(self.conv1(x)), self.inplace)
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def set_inplace(model: nn.Module, inplace: bool) -> nn.Module:
    """Turn the in-place ReLUs and residual adds of every CIFAR ResNet part of `model` on or off."""
    for module in model.modules():
        if isinstance(module, (BasicBlock, CifarResNet)):
            module.inplace = inplace
    return model


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks and a linear head: the cheapest student that still has a conv stage."""

    def __init__(self, num_classes: int, in_channels: int, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int, pool: bool) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            if pool:
                layers.append(nn.MaxPool2d(2))
            return nn.Sequential(*layers)

        self.features = nn.Sequential(
            block(in_channels, width, True), block(width, 2 * width, True), block(2 * width, 4 * width, False)
        )
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def _cifar(depth: int, width: int) -> Callable[[int, int], nn.Module]:
    return lambda num_classes, in_channels: CifarResNet(depth, num_classes, in_channels, width)


BUILDERS: dict[str, Callable[[int, int], nn.Module]] = {
    **{f"resnet{d}": _cifar(d, 16) for d in (8, 14, 20, 32, 56, 110)},
    **{f"resnet{d}x4": _cifar(d, 64) for d in (8, 14, 20, 32, 56, 110)},
    "cnn": lambda num_classes, in_channels: SmallCNN(num_classes, in_channels),
}


def build(name: str, num_classes: int, in_channels: int, image_size: int | None = None) -> nn.Module:
    """A CIFAR-family model; `image_size` is ignored (the models are fully convolutional up to the pool)."""
    return BUILDERS[name](num_classes, in_channels)


def names() -> list[str]:
    return sorted(BUILDERS)


def is_model(name: str) -> bool:
    return name in BUILDERS
