"""Per-class accuracy and reliability-diagram bins: the detail behind top-1 and ECE.

A mean accuracy can hide a class the student never learnt, and an ECE value does
not say whether the model is over- or under-confident; the report draws both from
these numbers, computed from the same test logits as the headline metrics.
"""

from __future__ import annotations

from typing import Any

import torch

from core.evaluate import ECE_BINS, expected_calibration_error


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Top-1 accuracy per true class; None for a class with no test image."""
    correct = torch.bincount(labels[predictions == labels], minlength=num_classes).double()
    total = torch.bincount(labels, minlength=num_classes).double()
    return [float(c / t) if t > 0 else None for c, t in zip(correct.tolist(), total.tolist(), strict=True)]


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """Per equal-width confidence bin `(lo, hi]`: image count, mean confidence, accuracy (None when empty).

    The same binning as `expected_calibration_error`, so the diagram shows exactly what ECE sums.
    """
    probs = torch.as_tensor(probs, dtype=torch.float64)
    confidence, prediction = probs.max(dim=1)
    correct = (prediction == labels).double()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    bins = torch.bucketize(confidence, edges[1:-1], right=False)
    count = torch.bincount(bins, minlength=n_bins)
    confidence_sum = torch.bincount(bins, weights=confidence, minlength=n_bins)
    correct_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    rows = []
    for b in range(n_bins):
        n = int(count[b])
        rows.append({
            "lo": float(edges[b]), "hi": float(edges[b + 1]), "count": n,
            "confidence": float(confidence_sum[b] / n) if n else None,
            "accuracy": float(correct_sum[b] / n) if n else None,
        })
    return rows


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
