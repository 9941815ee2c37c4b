"""State that ranks fill separately, made whole on every rank: the teacher-map cache (core.signals.maps)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from core.distributed.world import current, sum_ranks

if TYPE_CHECKING:
    from core.signals.maps import MapCache

_MERGED = "_merged_revision"  # the cache's revision right after its last merge


def merge_map_cache(cache: MapCache) -> None:
    """The union of every rank's cache on every rank; the lowest rank that holds a sample gives its entry.

    Collective: every rank calls it at the same point (an epoch end). Costs one all-reduce of a
    flag when no rank added entries since the last merge, else one all-gather of the fill masks
    and one sum of the maps and classes (each sample contributed by one rank only).
    """
    world = current()
    if not world.active:
        return
    added = cache.revision != getattr(cache, _MERGED, None)
    unknown = cache.maps is None or cache.classes is None
    added_anywhere, unknown_anywhere = sum_ranks([float(added), float(unknown)])
    if not added_anywhere or unknown_anywhere:
        return
    assert cache.maps is not None and cache.classes is not None
    device = cache.maps.device
    filled = cache.filled.to(device=device, dtype=torch.uint8)
    masks = [torch.zeros_like(filled) for _ in range(world.size)]
    dist.all_gather(masks, filled)
    stacked = torch.stack(masks).bool()
    held = stacked.any(dim=0)
    owner = stacked.to(torch.uint8).argmax(dim=0)  # the first rank holding each sample
    mine = held & (owner == world.rank)
    shape = (-1,) + (1,) * (cache.maps.dim() - 1)
    maps = torch.where(mine.view(shape), cache.maps, torch.zeros_like(cache.maps))
    classes = torch.where(mine, cache.classes, torch.zeros_like(cache.classes))
    dist.all_reduce(maps)
    dist.all_reduce(classes)
    cache.maps, cache.classes, cache.filled = maps, classes, held.cpu()
    cache.revision += 1
    setattr(cache, _MERGED, cache.revision)
