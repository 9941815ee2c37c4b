"""Epoch-end checkpoints: the state a stage needs to continue exactly where it stopped.

A worker can lose its process at any moment, so a checkpoint is written to a temporary
file and renamed over the old one (a reader sees the old or the new file, never half of
one). Files load with `weights_only=True`: only tensors and plain containers, no pickled
code, which is why RNG states are stored as tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.atomic import atomic_path


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically replace `path` with `state` (tensors, numbers, strings, lists, dicts)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The saved state, or None when there is no checkpoint yet. Tensors load on the CPU."""
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    """The global torch RNG streams (CPU and every CUDA device), e.g. for dropout."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
