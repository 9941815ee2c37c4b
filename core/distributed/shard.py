"""Each rank's share of an epoch: a disjoint slice of every global batch, with the weight that keeps the loss global.

The epoch's order is drawn from (seed, epoch) alone, the same on every rank, and cut into
global batches of `training.batch_size` exactly as one process would; rank r takes the r-th
of N near-equal slices of each. Sample indices are the set's own, so the teacher-map cache
keys on them unchanged. DDP averages the ranks' gradients, so a rank's mean loss is weighted
by N x (its samples / the global batch's): the sum over ranks is then the mean over the
global batch, also for the last, shorter batch whose slices differ in size.

A rank whose slice of a (last) batch is empty still takes a step, every rank must join each
gradient all-reduce, on one sample of that batch with weight 0: it adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RankShare:
    """One rank's samples of an epoch, in step order, with each step's loss weight."""

    order: torch.Tensor  # the rank's sample indices, step after step
    per_rank_batch: int  # training.batch_size / ranks: the length of every full step
    weights: list[float]  # per step: ranks x (this rank's samples / the global batch's), 0 for padding


def rank_share(order: torch.Tensor, batch_size: int, rank: int, ranks: int) -> RankShare:
    """Rank `rank`'s share of the epoch `order` cut into global batches of `batch_size` (divisible by `ranks`)."""
    if batch_size % ranks:
        raise ValueError(f"batch size {batch_size} is not divisible by {ranks} ranks")
    parts, weights = [], []
    for start in range(0, len(order), batch_size):
        global_batch = order[start : start + batch_size]
        part = torch.tensor_split(global_batch, ranks)[rank]
        weights.append(ranks * len(part) / len(global_batch))
        parts.append(part if len(part) else global_batch[:1])  # an empty slice: one sample, weight 0
    order_out = torch.cat(parts) if parts else order[:0]
    return RankShare(order_out, batch_size // ranks, weights)
