"""Where a job's tensors live."""

from __future__ import annotations

import torch


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA when present (and not refused), else the CPU."""
    if preference == "cpu" or not torch.cuda.is_available():
        if preference == "cuda":
            raise RuntimeError("training.device is 'cuda' but no CUDA device is available")
        return torch.device("cpu")
    return torch.device("cuda")
