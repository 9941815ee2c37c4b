"""Worker logging: every line written while a job runs names that job.

The engine logs without knowing which job it serves, so the job id rides in a
context variable that a logging filter stamps on every record; threads started
for a job (the heartbeat) run inside a copy of the job's context.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager

current_job_id: contextvars.ContextVar[str] = contextvars.ContextVar("current_job_id", default="-")

LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s [job=%(job_id)s] %(name)s: %(message)s"


class JobIdFilter(logging.Filter):
    """Stamp `record.job_id` so the format string can always use it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            record.job_id = current_job_id.get()
        return True


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Within this block every log line carries `job_id`."""
    token = current_job_id.set(job_id)
    try:
        yield
    finally:
        current_job_id.reset(token)


def configure_logging(level: str = "INFO") -> None:
    """One stderr handler on the root logger; idempotent, so celery and the CLI may both call it."""
    root = logging.getLogger()
    for handler in root.handlers:
        if getattr(handler, "_distill", False):
            return
    handler = logging.StreamHandler()
    handler._distill = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(JobIdFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
