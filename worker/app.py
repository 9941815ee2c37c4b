"""The Celery worker: `celery -A worker.app worker --pool solo --concurrency 1 -Q distill`.

One training job per worker process (solo pool, prefetch 1, late ack: see
store.queue). Worker start begins the sweeper; a shutdown request makes the
running job yield at its next step so the process exits promptly and the job
resumes elsewhere from its checkpoint.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from celery import signals

from store.queue import RUN_JOB_TASK, get_celery
from store.settings import get_settings
from store.temp_files import TempSweeper
from worker.logsetup import configure_logging, current_job_id
from worker.runtime import get_runtime
from worker.sweeper import Sweeper
from worker.tasks import run_job

log = logging.getLogger(__name__)

settings = get_settings()
configure_logging(settings.log_level)

app = get_celery()
run_job_task = app.task(name=RUN_JOB_TASK, ignore_result=True)(run_job)

_sweeper: Sweeper | None = None
_temp_sweepers: list[TempSweeper] = []
_job_tokens: dict[str, contextvars.Token[str]] = {}


@signals.setup_logging.connect
def _keep_our_logging(**_: Any) -> None:
    """Connected, so Celery leaves the root logger (and its job-id format) alone."""
    configure_logging(settings.log_level)


@signals.task_prerun.connect
def _name_the_job(task_id: str, args: tuple[Any, ...] | None = None, **_: Any) -> None:
    """Celery's own lines about the task (received, succeeded) carry the job id too."""
    _job_tokens[task_id] = current_job_id.set(str(args[0]) if args else "-")


@signals.task_postrun.connect
def _forget_the_job(task_id: str, **_: Any) -> None:
    token = _job_tokens.pop(task_id, None)
    if token is not None:
        current_job_id.reset(token)


@signals.worker_init.connect
def _on_worker_init(**_: Any) -> None:
    """Threads, the optimiser's lazy imports and cuDNN set once per worker process, not in a job's stage time."""
    from core.train.runtime import configure_torch

    configure_torch(settings.torch_threads)


@signals.worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    global _sweeper
    runtime = get_runtime()
    log.info("worker %s ready (database %s)", runtime.worker_id, runtime.settings.db_url.split("://")[0])
    _sweeper = Sweeper(runtime)
    _sweeper.start()
    _temp_sweepers.append(TempSweeper(runtime.settings).start())  # upload folders a killed API left


@signals.worker_shutting_down.connect
def _on_shutting_down(**_: Any) -> None:
    get_runtime().shutdown.set()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    if _sweeper is not None:
        _sweeper.stop()
    while _temp_sweepers:
        _temp_sweepers.pop().stop()
    log.info("worker %s stopped", get_runtime().worker_id)
