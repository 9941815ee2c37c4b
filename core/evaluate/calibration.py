"""Calibration: expected calibration error and the reliability diagram's bins, one binning for both.

The diagram must show exactly what ECE sums, so both read the same equal-width bins here.
"""

from __future__ import annotations

from typing import Any

import torch

ECE_BINS = 15


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """ECE of Guo et al. (2017): `sum_b |B_b|/N * |accuracy(B_b) - mean confidence(B_b)|`.

    Confidence is the top-1 probability; bins are `n_bins` equal-width intervals `(lo, hi]`
    of [0, 1] (a confidence of exactly 0 falls in the first), the common reference choice,
    so values compare with published ones.
    """
    probs = torch.as_tensor(probs, dtype=torch.float64)
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probs must be (N, classes) matching {len(labels)} labels, got {tuple(probs.shape)}")
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    if len(labels) == 0:
        return 0.0
    confidence, prediction = probs.max(dim=1)
    correct = (prediction == labels.to(prediction.device)).double()
    inner_edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)[1:-1]
    bins = torch.bucketize(confidence, inner_edges, right=False)  # edge[i-1] < c <= edge[i]
    count = torch.bincount(bins, minlength=n_bins).double()
    confidence_sum = torch.bincount(bins, weights=confidence, minlength=n_bins)
    correct_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    # |sum(correct) - sum(confidence)| / N equals |B|/N * |acc(B) - conf(B)|, and is 0 for empty bins.
    return float((correct_sum - confidence_sum).abs().sum() / count.sum())


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
