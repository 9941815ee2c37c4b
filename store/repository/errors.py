"""What the repository raises, and the error a failed job records.

Exceptions rather than return codes because each one means the same thing to every caller: the API
maps each to one answer (api/errors.py) and a worker to one reaction (LeaseLost: stop, write nothing).
"""

from __future__ import annotations

from dataclasses import dataclass


class IllegalTransition(Exception):
    """The job is not in a state that allows the requested change (API answers 409)."""

    def __init__(self, job_id: str, current: str, wanted: str) -> None:
        super().__init__(f"job {job_id} is {current}; cannot become {wanted}")
        self.job_id, self.current, self.wanted = job_id, current, wanted


class LeaseLost(IllegalTransition):
    """The worker no longer owns the job (it was re-queued or claimed by another worker): stop, write nothing."""

    def __init__(self, job_id: str, current: str, wanted: str, worker_id: str) -> None:
        super().__init__(job_id, current, wanted)
        self.args = (f"job {job_id} is no longer owned by worker {worker_id} (it is {current})",)
        self.worker_id = worker_id


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different body (API answers 409)."""


class NotFound(Exception):
    """No row with that id (API answers 404)."""


@dataclass
class JobError:
    """Why a job failed, as stored on its row: a code clients can branch on, a message people read, and
    where known the spec field and the pipeline stage it points at."""

    code: str
    message: str
    field: str | None = None
    where: str | None = None
