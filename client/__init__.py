"""A typed HTTP client for the distill service (httpx): what the `distill` client verbs and notebooks use.

It speaks only HTTP and imports none of the server's packages (api, worker, store, core).
"""

from client.errors import ApiError, ClientError, ConnectionFailed
from client.models import TERMINAL_STATUSES, Artifact, Dataset, Job, JobError, Model, Progress, Sweep, SweepJob
from client.service import DEFAULT_URL, KEY_ENV, URL_ENV, DistillClient, JobEvent

__all__ = [
    "DEFAULT_URL", "KEY_ENV", "TERMINAL_STATUSES", "URL_ENV", "ApiError", "Artifact", "ClientError",
    "ConnectionFailed", "Dataset", "DistillClient", "Job", "JobError", "JobEvent", "Model", "Progress",
    "Sweep", "SweepJob",
]
