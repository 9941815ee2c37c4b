"""Run N worker processes side by side and stop them cleanly (`distill serve`, `distill worker`).

Each worker is its own `celery ... worker --pool solo` process: one training job
per process, so a crash or an out-of-memory kill costs one job, which the
sweeper of a surviving worker re-queues. The children live in their own process
group, so a terminal's Ctrl-C reaches only the supervisor, which then asks each
child to stop (SIGTERM: the running job yields at its next step) and kills
those that do not exit in time. A child that dies on its own is restarted.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from store.queue import QUEUE_NAME

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
HEALTHY_AFTER_S = 60.0  # a child that lived this long resets the restart back-off


def worker_command(index: int, log_level: str = "INFO") -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker",
        "--pool", "solo", "--concurrency", "1", "-Q", QUEUE_NAME,
        "--hostname", f"distill{index}@%h", "--loglevel", log_level,
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip


class WorkerProcesses:
    def __init__(self, count: int, env: Mapping[str, str], log_level: str = "INFO", stop_timeout_s: float = 30.0,
                 niceness: int = 0, child_envs: Sequence[Mapping[str, str]] | None = None,
                 command: Callable[[int, str], list[str]] = worker_command) -> None:
        if count < 1:
            raise ValueError("need at least one worker")
        self.count = count
        self.niceness = niceness  # added to each child's nice value (lower CPU priority), e.g. next to an API
        self.env = dict(env)
        # what each child adds to `env` (`--gpus`: its CUDA_VISIBLE_DEVICES), one mapping per child
        self.child_envs = [dict(extra) for extra in child_envs] if child_envs is not None else [{}] * count
        if len(self.child_envs) != count:
            raise ValueError("child_envs needs one mapping per worker")
        self.command = command
        self.log_level = log_level
        self.stop_timeout_s = stop_timeout_s
        self.children: list[subprocess.Popen[bytes] | None] = [None] * count
        self._started_at = [0.0] * count
        self._failures = [0] * count
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._monitor: threading.Thread | None = None

    def start(self) -> None:
        for index in range(self.count):
            self._spawn(index)
        self._monitor = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self._monitor.start()

    def _spawn(self, index: int) -> None:
        command = self.command(index, self.log_level)
        if self.niceness:
            command = ["nice", "-n", str(self.niceness), *command]  # exec'd: the child's pid is the worker's
        child = subprocess.Popen(command, env={**self.env, **self.child_envs[index]}, start_new_session=True)
        self.children[index] = child
        self._started_at[index] = time.monotonic()
        log.info("started worker %d (pid %d)", index, child.pid)

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            for index, child in enumerate(self.children):
                if child is None or child.poll() is None:
                    continue
                with self._lock:
                    if self._stopping.is_set():
                        return
                    lived_s = time.monotonic() - self._started_at[index]
                    self._failures[index] = 0 if lived_s > HEALTHY_AFTER_S else self._failures[index] + 1
                    delay_s = _backoff_s(self._failures[index])
                    log.warning("worker %d (pid %d) exited with %s; restarting in %.0fs",
                                index, child.pid, child.returncode, delay_s)
                    self.children[index] = None
                if self._stopping.wait(delay_s):
                    return
                with self._lock:
                    if not self._stopping.is_set():
                        self._spawn(index)

    def alive(self) -> int:
        return sum(1 for child in self.children if child is not None and child.poll() is None)

    def stop(self) -> None:
        """SIGTERM every child, wait up to stop_timeout_s, then SIGKILL the rest."""
        with self._lock:
            self._stopping.set()
        running = [child for child in self.children if child is not None and child.poll() is None]
        for child in running:
            _signal(child, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for child in running:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in %.0fs; killing it", child.pid, self.stop_timeout_s)
                _signal(child, signal.SIGKILL)
                child.wait()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
        log.info("workers stopped")


def _backoff_s(recent_failures: int) -> float:
    """No wait after a long healthy life; growing waits for a child that keeps dying young."""
    if recent_failures == 0:
        return 0.0
    return RESTART_BACKOFF_S[min(recent_failures, len(RESTART_BACKOFF_S)) - 1]


def _signal(child: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.kill(child.pid, signum)
    except ProcessLookupError:
        pass
