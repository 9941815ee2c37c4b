"""A job on N ranks, launched from this process with PyTorch's elastic launcher (torch.distributed.run's API).

`run_on_ranks` is what `run_distillation` calls for a spec with `training.devices > 1` when it
is not already one rank of a group (a worker, or `distill run` without torchrun). The host
stays here: its callbacks (progress to a database, heartbeats, cancellation) run in this
process, fed by rank 0 through a queue; a cancel the host asks for is an Event rank 0 reads
between steps and broadcasts, so every rank stops at the same step. The ranks are spawned
processes of one c10d rendezvous on this machine (as `torchrun --standalone` starts them).

A rank that dies takes the group down: the survivors' next collective fails (at the latest
after the collective timeout), the elastic agent stops them and this raises `RanksFailed`;
the checkpoint of the last finished epoch stays, so the host's retry resumes from it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.errors import DistillError, JobCancelled
from core.resolver import LocalFiles, Resolver
from core.spec import JobSpec
from core.train.callbacks import NullCallbacks, Progress, RunCallbacks

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.2  # how often the host's should_cancel is asked while the ranks run


class RanksFailed(RuntimeError):
    """A rank of the job died or failed (not a user error): the job's retry resumes from its last checkpoint."""


@dataclass(frozen=True)
class ResolvedFiles:
    """The files the host's resolver gave for this spec, read once here: what the ranks use as their resolver."""

    dataset: Path | None = None
    weights: tuple[tuple[str, Path], ...] = ()  # (reference, file) of the teacher's and the student's weights

    def resolve_dataset(self, dataset_id: str) -> Path:
        if self.dataset is None:
            return LocalFiles().resolve_dataset(dataset_id)
        return self.dataset

    def resolve_weights(self, reference: str) -> Path:
        return dict(self.weights).get(reference, Path(reference))


def resolved_files(spec: JobSpec, resolver: Resolver) -> ResolvedFiles:
    """The spec's references resolved by the host (a store's resolver cannot travel to a spawned rank)."""
    weights: list[tuple[str, Path]] = []
    for field, reference in (("teacher.weights", spec.teacher.weights), ("student.weights", spec.student.weights)):
        if reference:
            try:
                weights.append((reference, resolver.resolve_weights(reference)))
            except DistillError as error:  # the host's resolver names the teacher's field
                raise type(error)(error.message, field=field) from error
    return ResolvedFiles(
        dataset=resolver.resolve_dataset(spec.dataset.id) if spec.dataset.id else None, weights=tuple(weights),
    )


class _RankZeroCallbacks:
    """Rank 0's callbacks: stage and progress events to the host's queue; cancel when the host set the Event."""

    def __init__(self, events: Any, cancel: Any) -> None:
        self.events, self.cancel = events, cancel

    def on_stage(self, stage: str) -> None:
        self.events.put(("stage", stage))

    def on_progress(self, progress: Progress) -> None:
        self.events.put(("progress", progress))

    def should_cancel(self) -> bool:
        return self.cancel.is_set()


class _HostPump(threading.Thread):
    """In the host: rank 0's events to the host's callbacks, in order; the host's cancel to the ranks' Event."""

    def __init__(self, events: Any, cancel: Any, callbacks: RunCallbacks) -> None:
        super().__init__(name="distill-ranks-pump", daemon=True)
        self.events, self.cancel, self.callbacks = events, cancel, callbacks
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self._drain(CANCEL_POLL_S)
            if not self.cancel.is_set() and self.callbacks.should_cancel():
                log.info("cancel asked: stopping every rank at its next step")
                self.cancel.set()
        self._drain(0.0)  # what rank 0 reported last (its final epoch's progress)

    def _drain(self, wait_s: float) -> None:
        try:
            kind, payload = self.events.get(timeout=wait_s)
        except queue.Empty:
            return
        while True:
            if kind == "stage":
                self.callbacks.on_stage(payload)
            else:
                self.callbacks.on_progress(payload)
            try:
                kind, payload = self.events.get_nowait()
            except queue.Empty:
                return

    def stop(self) -> None:
        """Stop after the last events; bounded, since a rank killed while writing can leave a message half sent."""
        self.stopping.set()
        self.join(timeout=10)


def run_on_ranks(
    kind: str, spec: JobSpec, out_dir: Path, callbacks: RunCallbacks | None, *,
    named_datasets: Mapping[str, Path] | None, resolver: Resolver | None, tracking: Any = None,
) -> dict[str, Any]:
    """Run `spec` ("distill": run_distillation, "teacher": run_teacher) as `training.devices` ranks; rank 0's result.

    Raises what one process would (DistillError, JobCancelled), and RanksFailed when a rank died.
    """
    _check_devices(spec)
    callbacks = callbacks or NullCallbacks()
    files = resolved_files(spec, resolver or LocalFiles())
    context = multiprocessing.get_context("spawn")
    events, cancel = context.Queue(), context.Event()
    pump = _HostPump(events, cancel, callbacks)
    pump.start()
    log.info("job %s: launching %d ranks", spec.name, spec.training.devices)
    try:
        results = launch(spec.training.devices, rank_main, kind, spec.model_dump_json(), str(out_dir),
                         dict(named_datasets or {}), files, tracking, events, cancel)
    finally:
        pump.stop()
    return _outcome(results[0])


def _check_devices(spec: JobSpec) -> None:
    """A CUDA job needs a GPU per rank on this machine: a clear error on `training.devices`, not N ranks
    crowding fewer GPUs (the CPU has no such limit: gloo ranks are processes)."""
    from core.errors import SpecError
    from core.models import pick_device
    from core.models.device import describe_device, gpu_shortfall

    device = pick_device(spec.training.device)
    if device.type != "cuda":
        return
    if gpu_shortfall(spec.training.devices, describe_device(device)) is not None:
        raise SpecError(
            f"training.devices is {spec.training.devices} but this machine has {torch.cuda.device_count()} "
            "CUDA device(s); "
            "run it on a worker that sees that many GPUs (CUDA_VISIBLE_DEVICES), or lower training.devices",
            field="training.devices",
        )


def launch(ranks: int, entry: Callable[..., Any], *args: Any) -> dict[int, Any]:
    """`entry(*args)` in `ranks` spawned processes of one standalone c10d rendezvous on this machine
    (what `torchrun --standalone --nproc-per-node ranks` does); each rank's return value by rank.

    `entry` must be importable by name (a module-level function); RanksFailed when a rank fails or dies.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=ranks, run_id=f"distill-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2, start_method="spawn",
    )
    try:
        return elastic_launch(config, entry)(*args)
    except ChildFailedError as exc:
        raise RanksFailed(f"a rank of the job failed: {_first_failure(exc)}") from exc


def _first_failure(error: Any) -> str:
    """The failed rank and its exit code or message, as the elastic agent reported them."""
    rank, failure = error.get_first_failure()
    message = failure.message if isinstance(failure.message, str) else failure.message.get("message", "")
    return f"rank {rank} exited with code {failure.exitcode}" + (f": {str(message)[:300]}" if message else "")


def _outcome(result: tuple[str, Any]) -> dict[str, Any]:
    """Rank 0's tuple back into what one process would have returned or raised."""
    status, payload = result
    if status == "ok":
        return payload
    if status == "cancelled":
        raise JobCancelled(payload)
    name, message, field = payload
    import core.errors

    error_class = getattr(core.errors, name, DistillError)
    raise error_class(message, field=field)


def _rank_threads() -> None:
    """On the CPU, the machine's cores shared by this machine's ranks unless DISTILL_TORCH_THREADS says otherwise."""
    from core.train.runtime import configure_torch, threads_setting

    wanted = threads_setting()
    if wanted == 0 and not torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        wanted = max(1, (os.cpu_count() or 1) // local)
    configure_torch(wanted)


def rank_main(
    kind: str, spec_json: str, out_dir: str, named: dict[str, Path], files: ResolvedFiles, tracking: Any,
    events: Any, cancel: Any,
) -> tuple[str, Any]:
    """One rank (a spawned process): join the group, run the job's part of this rank, leave; the outcome as a tuple."""
    from core import distributed
    from core.run import run_distillation, run_teacher

    logging.basicConfig(level=os.environ.get("DISTILL_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s rank" + os.environ.get("RANK", "?") + " %(name)s: %(message)s")
    _rank_threads()
    spec = JobSpec.model_validate_json(spec_json)
    world = distributed.join(spec.training.device)
    callbacks = _RankZeroCallbacks(events, cancel) if world.is_main else None
    try:
        if kind == "teacher":
            result = run_teacher(spec, Path(out_dir), callbacks, named_datasets=named, resolver=files)
        else:
            result = run_distillation(spec, Path(out_dir), callbacks, named_datasets=named, resolver=files,
                                      tracking=tracking)
        return ("ok", result if world.is_main else None)
    except JobCancelled as exc:
        return ("cancelled", str(exc))
    except DistillError as exc:
        return ("error", (type(exc).__name__, exc.message, exc.field))
    finally:
        distributed.leave()


def check_world(spec: JobSpec) -> None:
    """In a group started by torchrun, the spec's devices must be the group's size (the per-rank batch depends on it)."""
    from core import distributed
    from core.errors import SpecError

    world = distributed.current()
    if world.active and world.size != spec.training.devices:
        raise SpecError(
            f"training.devices is {spec.training.devices} but the job runs on {world.size} ranks; "
            f"set training.devices to {world.size}", field="training.devices",
        )
