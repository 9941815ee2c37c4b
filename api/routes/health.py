"""Liveness, readiness and Prometheus metrics; open without a key so orchestrators can probe them."""

from __future__ import annotations

import logging

from celery import Celery
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from api.deps import CeleryDep, SessionMakerDep, SettingsDep, StateDep
from api.schemas import CheckOut, HealthOut, ReadyOut, WorkerOut
from store import repository
from store.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

BROKER_TIMEOUT_S = 2.0


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> HealthOut:
    return HealthOut(status="ok")


def _check_database(sessions: sessionmaker[Session]) -> CheckOut:
    try:
        with sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("readyz: database check failed: %s", exc)
        return CheckOut(ok=False, detail=f"database unreachable: {type(exc).__name__}")
    return CheckOut(ok=True, detail="SELECT 1 ok")


def _check_broker(celery: Celery) -> CheckOut:
    try:
        with celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT_S)
            transport = connection.transport_cls
    except Exception as exc:
        log.warning("readyz: broker check failed: %s", exc)
        return CheckOut(ok=False, detail=f"broker unreachable: {type(exc).__name__}")
    return CheckOut(ok=True, detail=f"connected ({transport})")


def _check_worker(settings: Settings, sessions: sessionmaker[Session]) -> tuple[CheckOut, list[WorkerOut]]:
    """A worker refreshes its `workers` row every heartbeat; one that missed a few beats is gone.

    The table works for every broker (the filesystem transport has no remote control) and
    sees a worker that is busy with a job, which a broker ping would not.
    """
    try:
        with sessions() as session:
            alive = repository.present_workers(session, settings.heartbeat_s)
    except Exception as exc:
        log.warning("readyz: worker check failed: %s", exc)
        return CheckOut(ok=False, detail=f"worker check failed: {type(exc).__name__}"), []
    workers = [WorkerOut(id=record.id, hostname=record.hostname, device=record.device) for record in alive]
    if alive:
        return CheckOut(ok=True, detail=f"{len(alive)} worker(s) present"), workers
    return CheckOut(ok=False, detail="no worker reported within the last heartbeats"), workers


@router.get(
    "/readyz",
    summary="Readiness: database, broker and at least one worker",
    responses={503: {"model": ReadyOut, "description": "A check failed; `checks` says which."}},
)
def readyz(settings: SettingsDep, sessions: SessionMakerDep, celery: CeleryDep, response: Response) -> ReadyOut:
    worker_check, workers = _check_worker(settings, sessions)
    checks = {"database": _check_database(sessions), "broker": _check_broker(celery), "worker": worker_check}
    ready = all(check.ok for check in checks.values())
    body = ReadyOut(status="ready" if ready else "not_ready", checks=checks, workers=workers)
    if not ready:
        failed = ", ".join(name for name, check in checks.items() if not check.ok)
        log.warning("readyz: not ready (%s)", failed)
        response.status_code = 503
    return body


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"example": 'distill_jobs{status="queued"} 2.0\n'}}}},
)
def metrics(state: StateDep) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
