"""Do these weights fit this dataset and this architecture? One answer for the API, the worker and the CLI.

A weights file (or an uploaded model's record) is described by a `WeightsShape`, a
dataset by a `DatasetShape`; `fit_problems` compares them and says, in words a user can
act on, what does not fit. The API checks an uploaded model against a job's dataset with
it, the upload route checks a file against the form's claims, and `core.stages` checks a
teacher file against the loaded data, so the three can never disagree. The grey-vs-RGB
rule (how many channels an image has) lives here too, for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import SpecError

if TYPE_CHECKING:
    import torch
    from torch import nn

GREY_MODES = ("L", "1", "I;16")  # PIL modes read as one channel; every other mode is converted to RGB
CLASS_NAMES_HINT = " (a teacher with other classes, or another order: give teacher.class_names, its output order)"


def image_channels(mode: str) -> int:
    """Channels a PIL image of `mode` becomes in a dataset: 1 for grey modes, else 3 (RGB)."""
    return 1 if mode in GREY_MODES else 3


def image_mode(channels: int) -> str:
    """The PIL mode images are converted to for `channels` (the inverse of `image_channels`)."""
    return "L" if channels == 1 else "RGB"


@dataclass(frozen=True)
class DatasetShape:
    """What weights must match in a dataset; None = not known where the check runs."""

    num_classes: int | None
    in_channels: int | None


@dataclass(frozen=True)
class WeightsShape:
    """What a weights file (or a model record) says about itself; None = it does not say."""

    arch: str | None
    num_classes: int | None
    in_channels: int | None


def fit_problems(
    weights: WeightsShape, *, arch: str | None = None, dataset: DatasetShape | None = None, job: bool = False,
    role: str = "teacher",
) -> list[str]:
    """Every way `weights` do not fit architecture `arch` (the `role` model's) and `dataset`; empty when they
    fit. Only a teacher may be an exported program, which is its own architecture. For a `job`, a
    class-count mismatch says how to map a teacher's own classes (teacher.class_names)."""
    problems = []
    from core.models.exported import EXPORTED_ARCH

    own_architecture = (None, EXPORTED_ARCH) if role == "teacher" else (None,)
    if arch is not None and weights.arch not in own_architecture and weights.arch != arch:
        problems.append(f"it is a {weights.arch} but {role}.arch is {arch}")
    if dataset is not None:
        if None not in (dataset.num_classes, weights.num_classes) and weights.num_classes != dataset.num_classes:
            problems.append(f"it has {weights.num_classes} classes but the dataset has {dataset.num_classes}"
                            + (CLASS_NAMES_HINT if job else ""))
        if None not in (dataset.in_channels, weights.in_channels) and weights.in_channels != dataset.in_channels:
            problems.append(
                f"it takes {weights.in_channels}-channel input but the dataset has {dataset.in_channels} channel(s)"
            )
    return problems


def weights_shape(state: dict[str, Any], arch: str) -> WeightsShape:
    """Class count and input channels of a state dict meant for `arch`, read from its head and stem shapes."""
    from core.models import weights_dims

    num_classes, in_channels = weights_dims(arch, state)
    return WeightsShape(arch, num_classes, in_channels)


def check_weights_file(
    path: Path, arch: str, dataset: DatasetShape, field: str = "teacher.weights"
) -> dict[str, torch.Tensor]:
    """The file's state dict, or SpecError naming `field` when it does not fit (WeightsError if unreadable).

    The strict load (every key and shape) happens when the state is loaded into the model;
    this check names the usual mistake (another dataset's class count or channels) first, in words.
    """
    from core.models import read_state_dict

    if not path.is_file():
        raise SpecError(f"{field}: no such file {path.name}", field=field)
    state = read_state_dict(path, field=field)
    problems = fit_problems(weights_shape(state, arch), arch=arch, dataset=dataset, job=True)
    if problems:
        raise SpecError(f"{field} does not fit: {'; '.join(problems)}", field=field)
    return state


def check_program_file(
    path: Path, dataset: DatasetShape, image_size: int, field: str = "teacher.weights"
) -> nn.Module:
    """The torch.export program at `path`, loaded (core.models.exported), or SpecError naming `field` when its
    classes, channels or image size do not fit the dataset (WeightsError if it is refused or unreadable)."""
    from core.models.exported import EXPORTED_ARCH, load_exported, program_dims

    module = load_exported(path, field=field)
    num_classes, in_channels = program_dims(module)
    problems = fit_problems(WeightsShape(EXPORTED_ARCH, num_classes, in_channels), dataset=dataset, job=True)
    height, width = module.example_input_shape[2:]
    if (height, width) != (image_size, image_size):
        problems.append(f"it was exported for {height}x{width} images but dataset.image_size is {image_size}")
    if problems:
        raise SpecError(f"{field} does not fit: {'; '.join(problems)}", field=field)
    return module
