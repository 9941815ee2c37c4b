"""Which rank this process is in a job that runs as several torch.distributed ranks, and what ranks share.

A job with `training.devices: N` runs as N processes (ranks) of one process group: NCCL on
CUDA, each rank on its LOCAL_RANK device; gloo on the CPU. A process outside any group is a
world of one, and every function here is then a no-op, so the single-process path is unchanged.

Rank 0 is the one that talks to the host (progress, cancellation, heartbeats) and writes
files (checkpoints, weights, the report); the others only train. Every decision that changes
the control flow (cancel, stop) is rank 0's, broadcast, so no rank waits in a collective that
another rank left: that is the one rule that keeps a group from hanging.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# How long a collective waits for the slowest rank before it fails the job (a dead rank never hangs it).
TIMEOUT_ENV = "DISTILL_COLLECTIVE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class World:
    """This process's place: `rank` of `size` ranks, `local_rank` on this machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """A process group of more than one rank is running."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: reports, writes files, evaluates."""
        return self.rank == 0


def current() -> World:
    """The initialised process group's world, else a world of one."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def is_main() -> bool:
    return current().is_main


def launched_size(environ: dict[str, str] | None = None) -> int:
    """WORLD_SIZE as a launcher (torchrun, elastic_launch) set it; 1 when not launched as ranks."""
    env = os.environ if environ is None else environ
    return int(env.get("WORLD_SIZE", "1") or "1")


def collective_timeout() -> timedelta:
    """DISTILL_COLLECTIVE_TIMEOUT_S (default 300 s): after this a collective fails instead of waiting."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    return timedelta(seconds=float(raw) if raw else DEFAULT_TIMEOUT_S)


def join(preference: str = "auto") -> World:
    """Join the process group the launcher described in the environment (MASTER_ADDR, RANK, WORLD_SIZE...).

    NCCL with each rank on its LOCAL_RANK GPU when the job uses CUDA, gloo on the CPU; the
    collective timeout bounds every wait. A no-op when not launched as ranks or already joined.
    """
    if launched_size() <= 1 or dist.is_initialized():
        return current()
    cuda = preference != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # a failed or timed-out NCCL collective raises instead of leaving the rank stuck in the kernel
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    dist.init_process_group("nccl" if cuda else "gloo", timeout=collective_timeout())
    world = current()
    log.info("rank %d of %d joined (%s)", world.rank, world.size, "nccl" if cuda else "gloo")
    return world


def leave() -> None:
    """Leave the process group, if any (at the end of a rank's job, whatever happened)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: torch.device) -> torch.device:
    """The device of this rank: on CUDA the LOCAL_RANK GPU, else `device` as it is."""
    world = current()
    if device.type == "cuda" and world.active:
        return torch.device("cuda", world.local_rank)
    return device


def _flag_device() -> torch.device:
    """Where small control tensors travel: NCCL moves CUDA tensors only."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def main_decides(decision: bool) -> bool:
    """Rank 0's `decision`, on every rank (a broadcast); `decision` itself in a world of one."""
    if not current().active:
        return decision
    flag = torch.tensor([1 if decision else 0], dtype=torch.int32, device=_flag_device())
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def sum_ranks(values: list[float]) -> list[float]:
    """Element-wise sums over the ranks (float64), e.g. an epoch's loss sums and sample counts."""
    if not current().active:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_flag_device())
    dist.all_reduce(tensor)
    return [float(value) for value in tensor.cpu()]


def barrier() -> None:
    if current().active:
        dist.barrier()


def main_continues_alone() -> bool:
    """After the training stages: every rank waits for the others, leaves the group, and only rank 0 goes on
    (evaluation, export, heatmaps, the report run once, with no collective left to wait on). True on rank 0
    and in a world of one."""
    world = current()
    if not world.active:
        return True
    barrier()
    leave()
    return world.is_main
