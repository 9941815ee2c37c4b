"""`distill worker --gpus all|0,1,3`: one worker process per GPU, each seeing only its own device.

Several workers on one machine would otherwise all train on `cuda:0` (torch's default device):
each child gets CUDA_VISIBLE_DEVICES set to its GPU, so its `cuda` is that GPU and its jobs
never meet another worker's. On a host without CUDA, `--gpus` is refused with a clear message
(CPU hosts keep `--concurrency`).
"""

from __future__ import annotations

VISIBLE = "CUDA_VISIBLE_DEVICES"


class GpuChoiceError(ValueError):
    """`--gpus` names devices this host does not have (or the host has none)."""


def cuda_device_count() -> int:
    """GPUs this process can see (0 without CUDA); reading it does not create a CUDA context."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def parse_gpus(text: str, available: int) -> list[str]:
    """The GPU indices `--gpus` names ("all", or a comma list such as "0,1,3") among `available` devices."""
    if available < 1:
        raise GpuChoiceError("--gpus: this host has no CUDA device; on a CPU host use --concurrency N instead")
    if text.strip() == "all":
        return [str(index) for index in range(available)]
    chosen: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise GpuChoiceError(f"--gpus expects 'all' or GPU indices such as 0,1,3, not '{text}'")
        if int(part) >= available:
            raise GpuChoiceError(f"--gpus: GPU {part} does not exist; this host has {available} (0-{available - 1})")
        if part in chosen:
            raise GpuChoiceError(f"--gpus: GPU {part} is listed twice")
        chosen.append(str(int(part)))
    return chosen


def gpu_child_envs(gpus: list[str]) -> list[dict[str, str]]:
    """Per worker child: the one GPU it may see."""
    return [{VISIBLE: gpu} for gpu in gpus]
