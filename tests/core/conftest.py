"""Shared fixtures for the engine's tests: a tiny digits split and a quickly trained teacher.

Everything runs on one CPU thread with tiny models, so the whole suite fits in minutes
on a shared two-core machine.
"""

from __future__ import annotations

import pytest
import torch

from core.data import DataBundle, load_dataset
from core.models import build_model
from core.spec import DatasetSpec
from core.terms import cross_entropy_only
from core.train.loop import DistillationObjective, OptimConfig, train

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits16() -> DataBundle:
    """digits at 16x16, 20 training images per class (200), the full held-out split."""
    return load_dataset(DatasetSpec(name="digits", image_size=16, shots_per_class=20), seed=0)


@pytest.fixture(scope="session")
def trained_teacher(digits16: DataBundle) -> torch.nn.Module:
    """A small CNN trained a few epochs: good enough that its CE and its maps mean something."""
    torch.manual_seed(0)
    teacher = build_model("cnn", digits16.num_classes, digits16.in_channels)
    objective = DistillationObjective(teacher, cross_entropy_only(), digits16, torch.device("cpu"))
    config = OptimConfig(epochs=6, batch_size=32, lr=0.05, seed=0)
    train(teacher, objective, digits16.train_x, digits16.train_y, config, stage="training_teacher",
          device=torch.device("cpu"))
    objective.close()
    return teacher.eval()
