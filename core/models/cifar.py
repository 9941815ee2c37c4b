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


class BasicBlock(nn.Module):
    """The 3x3-3x3 residual block of He et al. (2016), option-B (1x1 conv) shortcut."""

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
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: three stages of n blocks at widths w, 2w, 4w."""

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
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


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
