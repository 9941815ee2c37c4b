"""XDistillation-style explanation target (Alharbi, Vu & Thai, "Learning Interpretation with
Explainable Knowledge Distillation", IEEE BigData 2021).

A small convolutional encoder-decoder learns to predict the teacher's explanation map
(min-max normalised, at the teacher's map resolution) from the input alone. During
distillation its prediction replaces the teacher's map as the explanation target: a
smoothed, input-only version of the teacher's evidence, that exists even for inputs on
which computing the teacher's gradients would be too expensive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.explain.reference import captum_maps
from core.data import DataBundle
from core.models import predict_logits
from core.explain import minmax_normalize
from core.train.objective import StepOutput
from core.signals import Batch


class ExplanationAutoencoder(nn.Module):
    """x -> map in [0, 1] of size `map_size`: two stride-2 conv stages down, two upsampling stages back."""

    def __init__(self, in_channels: int, map_size: tuple[int, int], width: int = 16) -> None:
        super().__init__()
        self.map_size = tuple(map_size)

        def conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.encoder = nn.Sequential(conv(in_channels, width), conv(width, 2 * width, 2), conv(2 * width, 4 * width, 2))
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            conv(4 * width, 2 * width),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            conv(2 * width, width),
            nn.Conv2d(width, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        decoded = self.decoder(self.encoder(x))
        return torch.sigmoid(F.interpolate(decoded, size=self.map_size, mode="bilinear", align_corners=False))


def teacher_map_targets(
    teacher: nn.Module, x: torch.Tensor, explainer: str, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """The autoencoder's regression targets: captum maps of the teacher's top-1 class, min-max normalised."""
    classes = predict_logits(teacher, x, device, batch_size).argmax(dim=1)
    return minmax_normalize(captum_maps(teacher, x, classes, explainer, batch_size))


@dataclass
class AutoencoderObjective:
    """MSE between the autoencoder's prediction and the teacher's normalised map of the same sample."""

    autoencoder: ExplanationAutoencoder
    train_targets: torch.Tensor  # (N_train, 1, h, w), indexed by training-sample index
    test_x: torch.Tensor
    test_targets: torch.Tensor
    device: torch.device

    def __post_init__(self) -> None:
        self.train_targets = self.train_targets.to(self.device)
        self.forward_model: nn.Module | None = None  # the autoencoder's DDP wrapper on several ranks

    def use_forward(self, module: nn.Module | None) -> None:
        self.forward_model = module

    def merge_ranks(self) -> None:
        pass  # the targets were computed for every sample before the stage

    def extra_parameters(self) -> list[nn.Parameter]:
        return []

    def frozen_models(self) -> list[nn.Module]:
        return []  # the teacher's maps were computed before the stage

    def step(self, batch: Batch) -> StepOutput:
        loss = F.mse_loss((self.forward_model or self.autoencoder)(batch.x), self.train_targets[batch.device_index])
        return StepOutput(loss, {"map_mse": loss.detach()})

    def held_out(self) -> dict[str, float]:
        was_training = self.autoencoder.training
        self.autoencoder.eval()
        with torch.inference_mode():
            batches = [self.test_x[i : i + 256] for i in range(0, len(self.test_x), 256)]
            predicted = torch.cat([self.autoencoder(batch.to(self.device)).cpu() for batch in batches])
        self.autoencoder.train(was_training)
        return {"test_map_mse": float(F.mse_loss(predicted, self.test_targets.cpu()))}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def autoencoder_objective(
    teacher: nn.Module, data: DataBundle, explainer: str, device: torch.device, seed: int
) -> tuple[ExplanationAutoencoder, AutoencoderObjective]:
    """A fresh autoencoder (seeded) and the objective that fits it to the teacher's maps on `data`."""
    train_targets = teacher_map_targets(teacher, data.train_x, explainer, device)
    test_targets = teacher_map_targets(teacher, data.test_x, explainer, device)
    torch.manual_seed(seed)
    autoencoder = ExplanationAutoencoder(data.in_channels, tuple(train_targets.shape[-2:])).to(device)
    objective = AutoencoderObjective(autoencoder, train_targets, data.test_x, test_targets, device)
    return autoencoder, objective


def restored_autoencoder(
    teacher: nn.Module, data: DataBundle, explainer: str, state: dict[str, Any], device: torch.device
) -> ExplanationAutoencoder:
    """The autoencoder a finished stage fitted, from its saved `state`; its map size (not a parameter, so
    not in the state) is the teacher's map size, read from one training image."""
    first = data.train.take(slice(0, 1))
    map_size = tuple(captum_maps(teacher, first, torch.zeros(1, dtype=torch.long), explainer).shape[-2:])
    autoencoder = ExplanationAutoencoder(data.in_channels, map_size).to(device)
    autoencoder.load_state_dict(state)
    return autoencoder
