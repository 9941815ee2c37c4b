"""The deployment table: how fast teacher and student answer, in PyTorch and in onnxruntime.

One row per (model, runtime, device, batch): median and p90 wall time of a forward
pass, and images per second at the median. Batch 1 is what a request-per-image
service sees, batch 32 what an offline scorer sees. Every row runs the same
number of timed passes after the same warm-up, with onnxruntime on as many
threads as torch, so the rows compare like for like on the machine that ran the job.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.deploy.onnx import onnx_session

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 32)
WARMUP_RUNS = 3


@dataclass
class LatencyRow:
    model: str  # "teacher" or "student"
    runtime: str  # "pytorch" or "onnxruntime"
    device: str  # "cpu" or "cuda"
    batch: int
    median_ms: float
    p90_ms: float
    images_per_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: a time some pass really took, no interpolation."""
    ordered = sorted(values)
    rank = max(1, int(np.ceil(q / 100.0 * len(ordered))))
    return ordered[rank - 1]


def time_calls(call: Callable[[], object], runs: int, sync: Callable[[], None] | None = None) -> list[float]:
    """Milliseconds of `runs` calls after `WARMUP_RUNS` untimed ones (`sync` waits for a GPU)."""
    if runs < 1:
        raise ValueError("latency runs must be >= 1")
    for _ in range(WARMUP_RUNS):
        call()
    if sync is not None:
        sync()
    times_ms = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        if sync is not None:
            sync()
        times_ms.append((time.perf_counter() - start) * 1000.0)
    return times_ms


def batch_of(images: torch.Tensor, size: int) -> torch.Tensor:
    """`size` images, repeating the given ones when there are fewer."""
    repeats = -(-size // len(images))
    return images.repeat(repeats, 1, 1, 1)[:size].contiguous() if repeats > 1 else images[:size].contiguous()


def _row(model: str, runtime: str, device: str, batch: int, times_ms: list[float]) -> LatencyRow:
    median = statistics.median(times_ms)
    return LatencyRow(model, runtime, device, batch, median, percentile(times_ms, 90), batch / (median / 1000.0))


def torch_rows(name: str, model: nn.Module, images: torch.Tensor, runs: int, devices: list[str]) -> list[LatencyRow]:
    rows = []
    for device_name in devices:
        device = torch.device(device_name)
        copy_on_device = copy.deepcopy(model).to(device).eval()
        sync = torch.cuda.synchronize if device.type == "cuda" else None
        for batch in BATCH_SIZES:
            x = batch_of(images, batch).to(device)
            with torch.inference_mode():
                times = time_calls(lambda: copy_on_device(x), runs, sync)  # noqa: B023 - used at once
            rows.append(_row(name, "pytorch", device_name, batch, times))
    return rows


def onnx_rows(name: str, path: Path, images: torch.Tensor, runs: int) -> list[LatencyRow]:
    import onnxruntime as ort

    rows = []
    targets = [("cpu", ["CPUExecutionProvider"])]
    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        targets.append(("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]))
    for device_name, providers in targets:
        session = onnx_session(path, providers=providers)
        input_name = session.get_inputs()[0].name
        for batch in BATCH_SIZES:
            feed = {input_name: batch_of(images, batch).cpu().numpy().astype(np.float32)}
            times = time_calls(lambda: session.run(None, feed), runs)  # noqa: B023 - used at once
            rows.append(_row(name, "onnxruntime", device_name, batch, times))
    return rows


def latency_table(
    models: Mapping[str, nn.Module], onnx_files: Mapping[str, Path | None], images: torch.Tensor, runs: int
) -> list[dict[str, Any]]:
    """Rows for every model in `models` (PyTorch on the CPU, and on CUDA when present) and every
    ONNX file given (onnxruntime's CPU provider, and its CUDA provider when installed)."""
    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    rows: list[LatencyRow] = []
    for name, model in models.items():
        rows += torch_rows(name, model, images, runs, devices)
        path = onnx_files.get(name)
        if path is not None:
            rows += onnx_rows(name, path, images, runs)
    for row in rows:
        log.info("latency %s %s %s batch %d: median %.2f ms, p90 %.2f ms, %.0f images/s", row.model, row.runtime,
                 row.device, row.batch, row.median_ms, row.p90_ms, row.images_per_s)
    return [row.as_dict() for row in rows]
