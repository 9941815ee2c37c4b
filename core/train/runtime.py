"""Process-wide torch setup, done once when a process that trains starts: threads, lazy imports, cuDNN.

Every entry point that trains calls `configure_torch` first: `distill run` (cli.run)
and each Celery worker process (worker_init). Doing it once per process, before any job,
keeps two costs out of every job's stage times:

- `DISTILL_TORCH_THREADS` (0 or unset = torch's default): torch's intra-op threads, read here so
  that the CLI honours it exactly as the workers do.
- The first optimiser built in a process imports `torch._dynamo` (torch.optim wraps its methods
  with `torch._disable_dynamo`, which imports it lazily on first use): about 2.4 s on a 2-core
  CPU, which would otherwise land in the first training stage of the process's first job.
- On CUDA, `cudnn.benchmark`: cuDNN times its convolution algorithms once per input shape and
  keeps the fastest (a job's shapes are fixed, so it pays after the first steps). Like the
  default heuristics, the chosen kernels are not guaranteed to be bitwise deterministic.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

THREADS_ENV = "DISTILL_TORCH_THREADS"


@dataclass(frozen=True)
class TorchSetup:
    """What `configure_torch` did, for the start-up log line."""

    threads: int  # torch's intra-op threads now
    threads_from_setting: bool  # DISTILL_TORCH_THREADS (or the caller) set them
    warmup_s: float  # time spent importing what the first optimiser would have imported
    cudnn_benchmark: bool


def threads_setting(environ: dict[str, str] | None = None) -> int:
    """DISTILL_TORCH_THREADS as an int >= 0 (0 = torch's default); a bad value is an error that names it."""
    raw = (os.environ if environ is None else environ).get(THREADS_ENV, "").strip()
    if not raw:
        return 0
    try:
        threads = int(raw)
    except ValueError:
        raise ValueError(f"{THREADS_ENV} must be a whole number >= 0, not '{raw}'") from None
    if threads < 0:
        raise ValueError(f"{THREADS_ENV} must be a whole number >= 0, not '{raw}'")
    return threads


def warm_imports() -> float:
    """Import now what the first optimiser would import lazily (torch._dynamo); returns the seconds it took."""
    started = time.perf_counter()
    import torch._dynamo  # noqa: F401 - the import is the point

    return time.perf_counter() - started


def configure_torch(threads: int | None = None) -> TorchSetup:
    """Apply the process's torch settings once, at start: `threads` (None = DISTILL_TORCH_THREADS) and the rest."""
    wanted = threads_setting() if threads is None else threads
    if wanted > 0:
        torch.set_num_threads(wanted)
    warmup_s = warm_imports()
    benchmark = torch.cuda.is_available()
    if benchmark:
        torch.backends.cudnn.benchmark = True
    setup = TorchSetup(torch.get_num_threads(), wanted > 0, warmup_s, benchmark)
    log.info("torch: %d threads%s, start-up imports %.1fs%s", setup.threads,
             f" ({THREADS_ENV})" if setup.threads_from_setting else "", warmup_s,
             ", cudnn.benchmark on" if benchmark else "")
    return setup
