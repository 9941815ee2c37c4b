"""The Celery app as both sides see it: the API sends by task name, the worker registers the task.

It lives in `store` because api and worker both import store and neither
imports the other. The SQL row is the truth; the message only says "look at
job X", so a lost or duplicated message is harmless (claiming is conditional).
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from store.settings import Settings, get_settings

RUN_JOB_TASK = "distill.run_job"
QUEUE_NAME = "distill"


def make_celery(settings: Settings) -> Celery:
    app = Celery("distill", broker=settings.broker)
    transport_options: dict[str, object] = {}
    if settings.broker.startswith("filesystem"):
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),  # kombu's default is ./control in the cwd
            "store_processed": False,
        }
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE_NAME,
        task_acks_late=True,  # a job's message is acked only when the job ends
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # one training job per worker process at a time
        task_ignore_result=True,  # results live in SQL, not in a result backend
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


@lru_cache
def get_celery() -> Celery:
    return make_celery(get_settings())


def enqueue_job(job_id: str, app: Celery | None = None) -> None:
    """Send 'run job X'. Call only after the transaction that created/requeued the job has committed."""
    (app or get_celery()).send_task(RUN_JOB_TASK, args=[job_id], queue=QUEUE_NAME)
