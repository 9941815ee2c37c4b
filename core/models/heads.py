"""Which tensors are a model's classifier, and starting weights with that classifier made fresh.

"The classifier" is found by the rule that reads a weights file's class count
(core.models.weights.weights_dims): the tensors whose shape grows with the number of
classes when `arch` is built empty with 2 and with 3 classes. One rule for every family
(a linear `fc`, torchvision's `classifier.3`, timm's `classifier` or `head.fc`, a B-cos
1x1 convolution), never a name guessed per architecture.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from core.errors import SpecError
from core.models.compat import DatasetShape, WeightsShape, check_weights_file, fit_problems, weights_shape
from core.models.weights import probe_shapes, load_state


def classifier_keys(arch: str) -> list[str]:
    """State-dict keys of `arch`'s classifier: the tensors whose shape depends on the class count."""
    two, three = probe_shapes(arch, 2, 1), probe_shapes(arch, 3, 1)
    return [key for key, shape in two.items() if key in three and three[key] != shape]


def load_with_fresh_head(
    model: nn.Module, arch: str, state: dict[str, torch.Tensor], field: str = "student.weights"
) -> nn.Module:
    """Load every tensor of `state` but the classifier into `model`, strictly; the classifier keeps the fresh
    initialisation `model` was built with. A key or shape mismatch elsewhere is the usual WeightsError."""
    head = set(classifier_keys(arch))
    own = model.state_dict()
    merged = {key: value for key, value in state.items() if key not in head}
    merged.update({key: own[key] for key in head if key in own})
    return load_state(model, merged, field=field)


def starting_weights_problems(weights: WeightsShape, arch: str, dataset: DatasetShape, head: str) -> list[str]:
    """Every way a student's starting `weights` do not fit `student.arch` and the dataset; empty when they fit.

    The teachers' rule (core.models.compat.fit_problems) for the architecture and input channels; the class
    count counts only when the head is kept, and its message says how to start a fresh head instead. The API (an
    uploaded model's record) and the engine (the file itself) both ask this.
    """
    problems = fit_problems(weights, arch=arch, dataset=DatasetShape(None, dataset.in_channels), role="student")
    if head != "reset" and None not in (weights.num_classes, dataset.num_classes) and \
            weights.num_classes != dataset.num_classes:
        problems.append(f"it has {weights.num_classes} classes but the dataset has {dataset.num_classes} "
                        "(student.head: \"reset\" keeps every other tensor and starts a fresh classifier)")
    return problems


def load_starting_weights(
    model: nn.Module, path: Path, arch: str, head: str, dataset: DatasetShape, field: str = "student.weights"
) -> nn.Module:
    """The student's starting weights from `path` (read and checked by the teachers' rules), loaded into `model`:
    all of them (`head` "keep"), or all but the classifier ("reset"). SpecError naming `field` when they do not fit."""
    state = check_weights_file(path, arch, DatasetShape(None, dataset.in_channels), field=field)
    problems = starting_weights_problems(weights_shape(state, arch), arch, dataset, head)
    if problems:
        raise SpecError(f"{field} does not fit: {'; '.join(problems)}", field=field)
    if head == "reset":
        return load_with_fresh_head(model, arch, state, field=field)
    return load_state(model, state, field=field)


__all__ = ["classifier_keys", "load_starting_weights", "load_with_fresh_head", "starting_weights_problems"]
