"""Per-class accuracy and the reliability diagram's bins: the detail behind top-1 and ECE.

A mean accuracy can hide a class the student never learnt, and an ECE value does
not say whether the model is over- or under-confident; the report draws both from
these numbers, computed from the same test logits as the headline metrics.
"""

from __future__ import annotations

from typing import Any

import torch

from core.evaluate.calibration import expected_calibration_error, reliability_bins


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Top-1 accuracy per true class; None for a class with no test image."""
    correct = torch.bincount(labels[predictions == labels], minlength=num_classes).double()
    total = torch.bincount(labels, minlength=num_classes).double()
    return [float(c / t) if t > 0 else None for c, t in zip(correct.tolist(), total.tolist(), strict=True)]


def diagnostics(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> dict[str, Any]:
    """The metrics.json fields `per_class_accuracy`, `reliability` and `teacher_ece`."""

    teacher_probs, student_probs = teacher_logits.softmax(dim=1), student_logits.softmax(dim=1)
    return {
        "per_class_accuracy": {
            "teacher": per_class_accuracy(teacher_logits.argmax(dim=1), labels, num_classes),
            "student": per_class_accuracy(student_logits.argmax(dim=1), labels, num_classes),
        },
        "reliability": {
            "teacher": reliability_bins(teacher_probs, labels),
            "student": reliability_bins(student_probs, labels),
        },
        "teacher_ece": expected_calibration_error(teacher_probs, labels),
    }
