"""A team's own teacher, as found in popular public CIFAR code: defined here, in the tests, never in the service.

A CIFAR ResNet with parameter-free "option A" shortcuts (a lambda that subsamples and
zero-pads channels), a head named `linear`: its state dict fits no zoo architecture, so
the only way to bring it is a torch.export program. `export_program` is the recipe the
README gives.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class LambdaLayer(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            pad = planes // 4
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class OptionAResNet(nn.Module):
    """resnet(6n+2) of the option-A family, one block per stage here: small enough for a CPU test."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2))
        self.layer3 = nn.Sequential(BasicBlock(2 * width, 4 * width, 2))
        self.linear = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


def export_program(model: nn.Module, path: Path, in_channels: int = 3, image_size: int = 32) -> Path:
    """The README's recipe: export in eval mode with a dynamic batch dimension, then save."""
    example = torch.randn(2, in_channels, image_size, image_size)
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, str(path))
    return path


def rewrite_archive(source: Path, target: Path, replace: dict[str, bytes]) -> Path:
    """A copy of the archive with members replaced (by name, relative to the root), stored like torch does."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
        root = archive.namelist()[0].split("/", 1)[0]
        for info in archive.infolist():
            name = info.filename[len(root) + 1:]
            out.writestr(info.filename, replace.get(name, archive.read(info.filename)))
        for name, data in replace.items():
            if f"{root}/{name}" not in archive.namelist():
                out.writestr(f"{root}/{name}", data)
    return target


class Marker:
    """A pickle that, unpickled by a full unpickler, creates the marker file (open(path, 'w'))."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (self.path, "w")


def marker_pickle(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(Marker(marker), buffer)
    return buffer.getvalue()
