"""BatchNorm over the global batch: the statistics of every rank's samples, on any device.

With plain DDP each rank normalises its per-rank batch by that batch's own statistics, so a
job on N ranks trains another model than the same job on one device (batch statistics over
B/N samples instead of B). The job's contract is that `training.batch_size` is the global
batch, so while a model trains on several ranks its BatchNorm layers compute their statistics
over all ranks' samples: each rank's per-channel mean, variance and count travel by
torch.distributed.nn's differentiable all_gather (its backward returns each rank its share of
the gradient, so the gradient is the one of the global batch). torch.nn.SyncBatchNorm does the same on CUDA
only; this works with gloo on the CPU too, so the shared path is the tested one.

The layers keep their class's state (weight, bias, running statistics): `globalise` swaps
the class of each BatchNorm in place and `localise` swaps it back, so state dicts, hooks and
saved weights are those of the plain model.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.distributed.nn.functional import all_gather

from core.distributed.world import current

# torch.distributed.nn's differentiable collectives warn that they will move (to a private module, today)
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")


class _GlobalStats:
    """The forward of a training BatchNorm on the global batch (mixed into a BatchNorm class)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not (self.training and current().active):  # type: ignore[attr-defined]
            return super().forward(x)  # type: ignore[misc]
        return _global_batch_norm(self, x)  # type: ignore[arg-type]


def _global_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Normalise `x` by the mean and variance of all ranks' batches; update the running statistics as
    BatchNorm does (unbiased variance over the global count).

    Each rank's mean and variance come from torch.var_mean (stable), and are combined with Chan's
    parallel formula after one differentiable all_gather: summing x and x^2 instead would lose
    digits to cancellation where a channel's mean is large against its spread.
    """
    dims = [0, *range(2, x.dim())]
    xf = x.float()  # statistics in float32 under autocast too
    local_var, local_mean = torch.var_mean(xf, dim=dims, unbiased=False)
    local_count = torch.full_like(local_mean[:1], x.numel() / x.shape[1])
    gathered = torch.stack(all_gather(torch.cat([local_mean, local_var, local_count])))  # (ranks, 2C + 1)
    channels = x.shape[1]
    means, variances, counts = gathered[:, :channels], gathered[:, channels : 2 * channels], gathered[:, -1:]
    count = counts.sum()
    mean = (means * counts).sum(dim=0) / count
    var = ((variances + (means - mean) ** 2) * counts).sum(dim=0) / count
    if bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)  # type: ignore[union-attr,operator]
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            unbiased = var.detach() * (count / (count - 1).clamp_min(1))
            bn.running_mean.mul_(1 - momentum).add_(mean.detach().to(bn.running_mean.dtype), alpha=momentum)
            bn.running_var.mul_(1 - momentum).add_(unbiased.to(bn.running_var.dtype), alpha=momentum)
    shape = [1, channels] + [1] * (x.dim() - 2)
    y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y.to(x.dtype)


_GLOBAL: dict[type, type] = {}


def _global_class(cls: type) -> type:
    """The global-statistics twin of a BatchNorm class (made once per class)."""
    if cls not in _GLOBAL:
        _GLOBAL[cls] = type(f"Global{cls.__name__}", (_GlobalStats, cls), {"_local_class": cls})
    return _GLOBAL[cls]


def globalise(model: nn.Module) -> int:
    """Every BatchNorm1d/2d/3d of `model` computes training statistics over all ranks; returns how many."""
    swapped = 0
    for module in model.modules():
        if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            module.__class__ = _global_class(type(module))
            swapped += 1
    return swapped


def localise(model: nn.Module) -> None:
    """Undo `globalise`: the plain BatchNorm classes again."""
    for module in model.modules():
        local = getattr(type(module), "_local_class", None)
        if local is not None:
            module.__class__ = local


__all__ = ["globalise", "localise"]
