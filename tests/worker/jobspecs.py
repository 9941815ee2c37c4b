"""Job specs small enough for tests: seconds on one CPU core, every stage still exercised."""

from __future__ import annotations

import copy
from typing import Any


def tiny_spec(*, teacher_epochs: int = 1, student_epochs: int = 1, shots_per_class: int = 10, **top: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "tiny-e2kd",
        "dataset": {"name": "digits", "image_size": 16, "shots_per_class": shots_per_class},
        "teacher": {"arch": "cnn", "weights": None, "epochs": teacher_epochs},
        "student": {"arch": "cnn"},
        "method": "e2kd",
        "training": {"epochs": student_epochs, "batch_size": 32, "lr": 0.05, "seed": 0, "device": "cpu"},
        "report": {"heatmaps": 2, "latency_runs": 2},
        "export": {"onnx": False},  # ONNX export is tested in tests/core; here it would only cost time
    }
    for key, value in top.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
    return copy.deepcopy(spec)
