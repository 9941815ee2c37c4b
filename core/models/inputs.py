"""What each model is fed: the teacher's own input normalisation, applied on the device.

The data are normalised once, with the dataset's statistics (mean_d, std_d), and the student
sees them as they are. A teacher trained elsewhere expects its own (mean_t, std_t) (ImageNet's
for most torchvision/timm weights): `feed_normalisation` registers a forward pre-hook on the
teacher that turns the dataset-normalised batch into the teacher's,
x_t = (x * std_d + mean_d - mean_t) / std_t, one per-channel affine map on whatever device the
batch is on (no copy of the data, nothing on the host). Input gradients therefore stay in the
student's input space, so teacher and student input maps remain comparable. `fed_normalisation`
says what a model was fed, for metrics.json, the report and the model card.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_STATE_KEY = "_fed_normalisation"  # kept in the model's __dict__: not a submodule, not in the state dict


class _Renormalise:
    """The forward pre-hook: dataset-normalised input -> the model's own normalisation."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        self.scale, self.shift = scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
        x = inputs[0]
        scale = self.scale.to(device=x.device, dtype=x.dtype, non_blocking=True)
        shift = self.shift.to(device=x.device, dtype=x.dtype, non_blocking=True)
        return (x * scale + shift, *inputs[1:])


def model_normalisation(model: nn.Module) -> tuple[list[float], list[float]] | None:
    """(mean, std) from a timm model's default config, or None when the model has none."""
    config = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    mean, std = config.get("mean"), config.get("std")
    return (list(mean), list(std)) if mean and std else None


def feed_normalisation(
    model: nn.Module, data_mean: list[float], data_std: list[float], mean: list[float], std: list[float]
) -> nn.Module:
    """Make `model` see its own (mean, std) normalisation of inputs that arrive normalised with the data's."""
    if len(mean) != len(data_mean) or len(std) != len(data_std):
        raise ValueError(f"{len(mean)} normalisation channels for {len(data_mean)}-channel images")
    d_mean, d_std = torch.tensor(data_mean), torch.tensor(data_std)
    t_mean, t_std = torch.tensor(mean), torch.tensor(std)
    model.register_forward_pre_hook(_Renormalise(d_std / t_std, (d_mean - t_mean) / t_std))
    model.__dict__[_STATE_KEY] = {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "source": "own"}
    return model


def fed_normalisation(model: nn.Module, data_mean: list[float], data_std: list[float]) -> dict[str, Any]:
    """The normalisation `model` was fed: its own (feed_normalisation) or the dataset's."""
    own = model.__dict__.get(_STATE_KEY)
    if own is not None:
        return dict(own)
    return {"mean": [float(v) for v in data_mean], "std": [float(v) for v in data_std], "source": "dataset"}
