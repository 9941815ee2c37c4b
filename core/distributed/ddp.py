"""The trained model of a stage on several ranks: DistributedDataParallel, global BatchNorm, shared extras.

Only the model a stage trains is wrapped. The frozen teacher and, in the student stage, the
XDistillation autoencoder have no trainable parameters there: each rank runs its own copy
(wrapping them would only add a parameter broadcast and the classic "frozen teacher in DDP"
failures). Trainable parameters that live outside the model (a FitNet regressor) are not in
the DDP module; their gradients are averaged by `average_gradients` between backward and step.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.distributed.batchnorm import globalise, localise
from core.distributed.world import current

log = logging.getLogger(__name__)


def wrap(model: nn.Module, objective: Any, device: torch.device) -> None:
    """On several ranks: `model`'s BatchNorm over the global batch, and `objective` forwards it through DDP.

    DDP broadcasts rank 0's parameters and buffers when it is built: built after a restore,
    every rank starts the same. On CUDA the rank's own GPU is DDP's device.
    """
    if not current().active:
        return
    swapped = globalise(model)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    objective.use_forward(ddp)
    log.debug("DDP on %s, %d BatchNorm layers on global statistics", device, swapped)


def unwrap(model: nn.Module, objective: Any) -> None:
    """Undo `wrap` when the stage ends: the plain model again, forwarded directly."""
    if not current().active:
        return
    objective.use_forward(None)
    localise(model)


def average_gradients(parameters: list[nn.Parameter]) -> None:
    """The mean over ranks of these parameters' gradients (DDP does this for the wrapped model's).

    A parameter without a gradient on this rank counts as a zero gradient, so every rank joins
    the same all-reduce; one in a single bucket keeps it to one collective per step.
    """
    world = current()
    if not world.active or not parameters:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([grad.reshape(-1) for grad in grads]).div_(world.size)
    dist.all_reduce(flat)
    offset = 0
    for parameter in parameters:
        size = parameter.numel()
        parameter.grad = flat[offset : offset + size].view_as(parameter).clone()
        offset += size


def merge_objective(objective: Any) -> None:
    """Per-rank state of the objective (the teacher-map cache) made whole on every rank, at an epoch end."""
    if current().active:
        merge = getattr(objective, "merge_ranks", None)
        if merge is not None:
            merge()
