"""One job on several ranks of torch.distributed: who is who, DDP, sharding, the launcher.

`training.devices: N` runs a job as N ranks (core.distributed.launch); the training loop asks
this package where it stands (`current`) and it answers "a world of one" outside a process
group, so one-process runs take exactly the path they always took.
"""

from core.distributed.ddp import average_gradients, merge_objective, unwrap, wrap
from core.distributed.world import (
    World, barrier, current, is_main, join, launched_size, leave, main_continues_alone, main_decides, rank_device,
    sum_ranks,
)

__all__ = [
    "World", "average_gradients", "barrier", "current", "is_main", "join", "launched_size", "leave",
    "main_continues_alone", "main_decides", "merge_objective", "rank_device", "sum_ranks", "unwrap", "wrap",
]
