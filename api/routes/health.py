"""Liveness, readiness and Prometheus metrics; open without a key so orchestrators can probe them."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from celery import Celery
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from api.deps import CeleryDep, SessionMakerDep, SettingsDep
from api.schemas import CheckOut, HealthOut, ReadyOut
from store.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

BROKER_TIMEOUT_S = 2.0
PING_TIMEOUT_S = 1.0
# A worker rewrites its presence file every heartbeat; one missing this many beats is gone.
PRESENCE_MISSED_BEATS = 3


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> HealthOut:
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


def live_workers(settings: Settings, now: float | None = None) -> list[str]:
    """Worker ids whose presence file (DISTILL_HOME/workers/<id>.json, rewritten every heartbeat) is fresh."""
    folder = settings.distill_home / "workers"
    if not folder.is_dir():
        return []
    now = time.time() if now is None else now
    max_age_s = PRESENCE_MISSED_BEATS * settings.heartbeat_s
    alive = []
    for path in sorted(folder.glob("*.json")):
        try:
            document = json.loads(Path(path).read_text())
            if now - float(document["time"]) <= max_age_s:
                alive.append(str(document.get("worker_id", path.stem)))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half-written or foreign file: not a live worker
    return alive


def _check_worker(settings: Settings, celery: Celery) -> CheckOut:
    alive = live_workers(settings)
    if alive:
        return CheckOut(ok=True, detail=f"{len(alive)} worker(s) present")
    if settings.broker.startswith("filesystem"):
        # The filesystem transport has no remote control worth relying on: presence files are the signal.
        return CheckOut(ok=False, detail="no worker presence file is fresh")
    try:
        replies = celery.control.ping(timeout=PING_TIMEOUT_S)
    except Exception as exc:
        log.warning("readyz: worker ping failed: %s", exc)
        return CheckOut(ok=False, detail=f"worker ping failed: {type(exc).__name__}")
    if replies:
        return CheckOut(ok=True, detail=f"{len(replies)} worker(s) answered ping")
    return CheckOut(ok=False, detail="no worker answered ping")


@router.get(
    "/readyz",
    summary="Readiness: database, broker and at least one worker",
    responses={503: {"model": ReadyOut, "description": "A check failed; `checks` says which."}},
)
def readyz(settings: SettingsDep, sessions: SessionMakerDep, celery: CeleryDep, response: Response) -> ReadyOut:
    checks = {
        "database": _check_database(sessions),
        "broker": _check_broker(celery),
        "worker": _check_worker(settings, celery),
    }
    ready = all(check.ok for check in checks.values())
    body = ReadyOut(status="ready" if ready else "not_ready", checks=checks)
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
def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
