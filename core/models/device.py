"""Where a job's tensors live, and how a host names the device it ran on."""

from __future__ import annotations

from typing import Any

import torch

from core.errors import SpecError


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA when present (and not refused), else the CPU; a job that asks for CUDA where there is none fails
    at once with an error on `training.device`, never silently on the CPU."""
    if preference == "cpu" or not torch.cuda.is_available():
        if preference == "cuda":
            raise SpecError("training.device is 'cuda' but this machine has no CUDA device",
                            field="training.device")
        return torch.device("cpu")
    return torch.device("cuda")


def describe_device(device: torch.device | None = None) -> dict[str, Any]:
    """The device a job runs on, as job documents and worker presence show it: kind, name, memory (CUDA)."""
    device = device or pick_device()
    if device.type != "cuda":
        return {"type": "cpu", "name": "cpu", "count": 1}
    index = device.index if device.index is not None else torch.cuda.current_device()
    properties = torch.cuda.get_device_properties(index)
    return {"type": "cuda", "name": properties.name, "memory_bytes": int(properties.total_memory),
            "count": torch.cuda.device_count()}


def gpu_shortfall(devices: int, seen: dict[str, Any] | None) -> int | None:
    """How many GPUs a CUDA job of `devices` ranks lacks where `seen` (a describe_device answer) was taken;
    None when it fits. One rule for the worker (its own device) and the API (the workers it knows)."""
    have = int(seen.get("count", 0)) if seen and seen.get("type") == "cuda" else 0
    return None if devices <= have else devices - have
