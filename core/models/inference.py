"""Eval-mode forward passes in batches: the one way every stage reads a model's logits.

Training objectives, evaluation, heatmaps, the ONNX check and the autoencoder all need a
model's logits on a tensor of images without touching its train/eval mode or its graph.
"""

from __future__ import annotations

import torch
from torch import nn


def predict_logits(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Eval-mode logits `(N, classes)` of `x`, computed on `device` in batches, returned on the CPU.

    The model's previous train/eval mode is restored, so a trainer can call this mid-training.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(logits) if logits else torch.empty(0, 0)
