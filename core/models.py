"""Model zoo: CIFAR-style ResNets, a small CNN and torchvision classifiers.

Every builder takes `(num_classes, in_channels)` so any dataset fits any
architecture. `explained_layer` is the one place that says which module is the
"last conv stage" of each family: Grad-CAM, attention transfer and FitNet hints
all read that module's output through forward hooks, so models stay unmodified.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import WeightsError


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


def _torchvision(name: str) -> Callable[[int, int], nn.Module]:
    """A torchvision classifier with a new head and, if needed, a new first conv (random init, no download)."""

    def build(num_classes: int, in_channels: int) -> nn.Module:
        import torchvision.models as tvm

        model = getattr(tvm, name)(weights=None, num_classes=num_classes)
        if in_channels != 3:
            if name.startswith("resnet"):
                old = model.conv1
                model.conv1 = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
            else:  # mobilenet_v3: features[0] is Conv2dNormActivation
                old = model.features[0][0]
                model.features[0][0] = nn.Conv2d(
                    in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
                )
        return model

    return build


def _cifar(depth: int, width: int) -> Callable[[int, int], nn.Module]:
    return lambda num_classes, in_channels: CifarResNet(depth, num_classes, in_channels, width)


ARCHITECTURES: dict[str, Callable[[int, int], nn.Module]] = {
    **{f"resnet{d}": _cifar(d, 16) for d in (8, 14, 20, 32, 56, 110)},
    **{f"resnet{d}x4": _cifar(d, 64) for d in (8, 14, 20, 32, 56, 110)},
    "cnn": lambda num_classes, in_channels: SmallCNN(num_classes, in_channels),
    "resnet18": _torchvision("resnet18"),
    "resnet34": _torchvision("resnet34"),
    "mobilenet_v3_small": _torchvision("mobilenet_v3_small"),
}


def build_model(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise KeyError(f"unknown architecture '{arch}'")
    return ARCHITECTURES[arch](num_classes, in_channels)


def explained_layer(model: nn.Module) -> nn.Module:
    """The last conv stage: Grad-CAM's layer and the feature used by AT and FitNet."""
    if isinstance(model, CifarResNet):
        return model.layer3
    if isinstance(model, SmallCNN):
        return model.features[-1]
    if hasattr(model, "layer4"):  # torchvision ResNet
        return model.layer4
    if hasattr(model, "features"):  # torchvision MobileNetV3
        return model.features[-1]
    raise ValueError(f"no explained layer known for {type(model).__name__}")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_weights(model: nn.Module, path: Path) -> None:
    """safetensors, so that downloads load without pickle code execution."""
    from safetensors.torch import save_file

    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load a safetensors file strictly into `model`; any mismatch is a WeightsError, not a crash."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"not a readable safetensors file: {exc}", field="teacher.weights") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else "state dict mismatch"
        raise WeightsError(f"weights do not fit the architecture: {first_line}", field="teacher.weights") from exc
    return model


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA when present (and not refused), else the CPU."""
    if preference == "cpu" or not torch.cuda.is_available():
        if preference == "cuda":
            raise RuntimeError("training.device is 'cuda' but no CUDA device is available")
        return torch.device("cpu")
    return torch.device("cuda")
