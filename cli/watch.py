"""Following a job in the terminal: a live tqdm bar (submit --wait) or one line per event (logs).

Both are fed by the job's Server-Sent Events through DistillClient.follow, which
reopens a broken stream (server restart, proxy timeout) for the same job.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from typing import TextIO

from tqdm import tqdm

from cli.connection import EXIT_DETACHED, EXIT_JOB_CANCELLED, EXIT_JOB_FAILED, EXIT_OK
from cli.render import metrics_block
from client import ClientError, DistillClient, Job

BAR_STEPS = 1000  # the bar counts thousandths of the whole run


def step_text(job: Job) -> str:
    """'epoch 2/5  step 12/23  loss 0.4210': where the run is and its latest training loss."""
    progress = job.progress
    if progress is None:
        return ""
    parts = []
    if progress.total_epochs:
        parts.append(f"epoch {progress.epoch}/{progress.total_epochs}")
    if progress.total_steps:
        parts.append(f"step {progress.step}/{progress.total_steps}")
    loss = progress.metrics.get("loss")
    if isinstance(loss, (int, float)):
        parts.append(f"loss {loss:.4f}")
    return "  ".join(parts)


def state_text(job: Job) -> str:
    return job.status + (f": {job.stage}" if job.stage else "")


class _StepBar(tqdm):
    """tqdm with a `{step}` field: its own `{postfix}` comes with a leading ', ' meant for its default layout."""

    step_text = ""

    @property
    def format_dict(self) -> dict:
        return {**super().format_dict, "step": self.step_text}


class ProgressBar:
    """One bar for the whole run: the stage as its label, epoch/step/loss after it; state changes as lines."""

    def __init__(self, stream: TextIO) -> None:
        self._bar = _StepBar(total=BAR_STEPS, file=stream, dynamic_ncols=True, leave=True, desc="queued",
                             bar_format="{desc:<17} {percentage:3.0f}%|{bar}| {step} [{elapsed}]")
        self._state: str | None = None

    def show(self, job: Job) -> None:
        if state_text(job) != self._state:
            self._state = state_text(job)
            self._bar.write(f"{datetime.now():%H:%M:%S} {self._state}", file=self._bar.fp)
            self._bar.set_description_str(job.stage or job.status, refresh=False)
        fraction = 1.0 if job.status == "succeeded" else (job.progress.fraction if job.progress else 0.0)
        self._bar.n = round(min(max(fraction, 0.0), 1.0) * BAR_STEPS)
        self._bar.step_text = step_text(job)
        self._bar.refresh()

    def note(self, text: str) -> None:
        self._bar.write(text, file=self._bar.fp)

    def close(self) -> None:
        self._bar.close()


def follow_with_bar(client: DistillClient, job_id: str, stream: TextIO = sys.stderr) -> Job:
    bar = ProgressBar(stream)
    try:
        for event in client.follow(job_id, on_reconnect=lambda problem: bar.note(
                f"connection lost ({problem.message}); reconnecting to {job_id}...")):
            bar.show(event.job)
    finally:
        bar.close()
    return client.get(job_id)


def follow_as_lines(client: DistillClient, job_id: str, stream: TextIO = sys.stdout) -> Job:
    """`distill logs`: one line per event, flushed at once so it can be piped."""
    def reconnecting(problem: ClientError) -> None:
        print(f"{datetime.now():%H:%M:%S} connection lost ({problem.message}); reconnecting...", file=stream,
              flush=True)

    for event in client.follow(job_id, on_reconnect=reconnecting):
        job = event.job
        fraction = f"{job.progress.fraction:6.1%}" if job.progress else "     -"
        print(f"{datetime.now():%H:%M:%S} {event.kind:<8} {state_text(job):<28} {fraction}  {step_text(job)}".rstrip(),
              file=stream, flush=True)
    return client.get(job_id)


def outcome(job: Job) -> int:
    """The end of a followed job on stdout/stderr, and the exit code it means."""
    if job.status == "succeeded":
        print(f"job {job.id} succeeded")
        print(metrics_block(job.metrics))
        print(f"artifacts: distill download {job.id} --out DIR  ({len(job.artifacts)} files)")
        return EXIT_OK
    error = job.error
    detail = f"{error.code}: {error.message}" + (f" (in {error.where})" if error and error.where else "") \
        if error else "no error recorded"
    print(f"job {job.id} {job.status}: {detail}", file=sys.stderr)
    return EXIT_JOB_CANCELLED if job.status == "cancelled" else EXIT_JOB_FAILED


def detached(job_id: str) -> int:
    """Ctrl-C while following: the job is not cancelled, only our watching stops."""
    print(f"\ndetached from job {job_id}; it keeps running on the server "
          f"(follow: distill logs {job_id}, cancel: distill cancel {job_id})", file=sys.stderr)
    return EXIT_DETACHED


def follow_to_end(follow: Callable[[DistillClient, str], Job], client: DistillClient, job_id: str) -> int:
    """Follow `job_id` with `follow` (the bar or the lines) and exit with its outcome; Ctrl-C only detaches,
    the same for every verb that follows a job, since the job keeps running on the server either way."""
    try:
        final = follow(client, job_id)
    except KeyboardInterrupt:
        return detached(job_id)
    return outcome(final)
