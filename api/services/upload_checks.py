"""Upload checks out of the API's memory: each runs in a child process, at most K at once.

Unpacking and decoding an uploaded archive can take as much memory as its images
allow, and loading uploaded weights as much as their tensors; in the API process that memory stays (the allocator keeps it) and adds up over
concurrent uploads. Here every check runs in a fresh child process (one task per
child, so its memory goes back to the system when it exits), forked from a server
process that has already imported the checking code, so a check starts in
milliseconds. At most `slots` checks run at once; one more is refused at once with
`UploadChecksBusy` (503 + Retry-After) rather than queued behind a bomb.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from api.services.errors import UploadChecksBusy
from api.services.image_checks import set_pixel_guard
from core.errors import DataError

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_AFTER_S = 10
_PRELOAD = ["api.services.dataset_uploads", "api.services.model_uploads"]
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _start_checking_process(max_image_pixels: int) -> None:
    """In each checking process: PIL's guard at the service's limit, and death with its parent. The
    parent is the fork server, which exits with the API, so a check never outlives a killed API
    (and never writes into an upload folder the next start has swept)."""
    set_pixel_guard(max_image_pixels)
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except (OSError, AttributeError):  # not Linux: the check ends on its own
        pass


class UploadChecks:
    """A bounded pool of checking processes, one per app (api.state.AppState); `close()` at shutdown."""

    def __init__(self, slots: int, max_image_pixels: int) -> None:
        self.slots = slots
        self.max_image_pixels = max_image_pixels
        self._free = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                context = multiprocessing.get_context("forkserver")  # never fork the threaded API itself
                context.set_forkserver_preload(_PRELOAD)
                self._executor = ProcessPoolExecutor(
                    max_workers=self.slots, mp_context=context, max_tasks_per_child=1,
                    initializer=_start_checking_process, initargs=(self.max_image_pixels,),
                )
            return self._executor

    def run(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`function(*args, **kwargs)` in a checking process; its DistillError is raised here as it was there."""
        if not self._free.acquire(blocking=False):
            raise UploadChecksBusy(self.slots, RETRY_AFTER_S)
        try:
            return self._pool().submit(function, *args, **kwargs).result()
        except BrokenProcessPool as exc:
            self._reset()
            log.warning("an upload check's process died (out of memory?); the upload is refused")
            raise DataError("the check of this file did not finish (it needs more memory than allowed)",
                            "file") from exc
        finally:
            self._free.release()

    def _reset(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the checking processes (app shutdown)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
