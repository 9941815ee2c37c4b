"""Mixed precision for a training step: `training.precision` = fp32, bf16 or fp16.

- `bf16`/`fp16`: the forward (and the graph the explanation term differentiates) runs under
  `torch.autocast` on the job's device; parameters and optimizer state stay float32.
- `fp16` on CUDA adds a `GradScaler` (fp16 gradients underflow without loss scaling);
  bf16 has float32's exponent range and needs none. On the CPU, fp16 autocast runs unscaled.
- Explanation maps are computed in float32 (core.explain casts activations and gradients),
  so the map cache and the explanation loss keep full precision.
- `channels_last` memory format where it helps (`uses_channels_last`): on CUDA with a 16-bit
  precision (tensor-core kernels prefer NHWC), and on the CPU at every precision, where oneDNN's
  convolutions and their backward run NHWC without reordering each activation: a KD step of
  resnet20 -> resnet8 at 32 px took 0.63-0.76x the NCHW time in an interleaved micro-benchmark
  (bench/README.md 2c). A resumed stage uses the same format as the run it resumes, so resume
  stays bit-identical; saved weights are made contiguous (core.models.weights).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def uses_channels_last(precision: str, device: torch.device) -> bool:
    """Whether a stage on `device` at `precision` runs its model and 4-D inputs in channels_last."""
    return device.type == "cpu" or (device.type == "cuda" and precision != "fp32")


class Precision:
    """Autocast, loss scaling and memory format of one training stage."""

    def __init__(self, precision: str, device: torch.device) -> None:
        if precision not in ("fp32", *DTYPES):
            raise ValueError(f"unknown precision '{precision}'; known: fp32, bf16, fp16")
        self.precision, self.device = precision, device
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" and device.type == "cuda" else None
        self.channels_last = uses_channels_last(precision, device)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.precision == "fp32":
            yield
            return
        with torch.autocast(self.device.type, dtype=DTYPES[self.precision]):
            yield

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def release_model(self, model: nn.Module) -> nn.Module:
        """Back to the default layout when the stage ends.

        Outside a stage every model is contiguous, whatever it went through: a teacher trained in
        this job and the same teacher read from a file then compute the same numbers (the
        XDistillation targets, the report), which keeps a resumed job bit-identical.
        """
        return model.to(memory_format=torch.contiguous_format) if self.channels_last else model

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
             after_backward: Callable[[], None] | None = None) -> None:
        """backward + optimizer step, through the scaler when there is one; `after_backward` runs between them
        (e.g. averaging gradients over ranks)."""
        if self.scaler is None:
            loss.backward()
            if after_backward is not None:
                after_backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        if after_backward is not None:
            after_backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
