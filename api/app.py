"""The FastAPI application: one Settings, one Database, one Celery client per app.

`create_app(settings)` builds everything from the settings it is given (or the
environment), so tests and the embedded `distill serve` can run several apps
side by side. In embedded mode (SQLite) the schema is migrated on startup; with
PostgreSQL migrations are a deploy step (`distill migrate`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from sqlalchemy.engine import make_url
from starlette.concurrency import run_in_threadpool

from api.auth import ApiKeyMiddleware
from api.dashboard import mount_dashboard
from api.deps import require_api_key
from api.docs_pages import mount_docs
from api.errors import install_error_handlers
from api.fastpath import add_fast_routes
from api.limits import BodyLimitMiddleware
from api.metrics import ApiMetrics, MetricsMiddleware
from api.routes import datasets, health, jobs, models, sweeps
from api.schemas import ErrorResponse
from api.services.upload_staging import tmp_dir
from api.state import AppState
from store.db import Database, upgrade_database
from store.queue import make_celery
from store.settings import Settings, get_settings
from store.storage import storage_from_settings
from store.temp_files import TempSweeper

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"

_DESCRIPTION = """
Explanation-guided knowledge distillation as a service: submit a job spec, follow
its progress (poll or Server-Sent Events), download the distilled student, its
metrics and teacher-vs-student heatmaps.

Every error is `{"error": {"code", "message", "field"}}`. When the service runs with
API keys, every `/v1` route needs `Authorization: Bearer <key>`.
"""


def is_embedded(settings: Settings) -> bool:
    """SQLite means the one-machine setup, where the app itself owns the schema."""
    return make_url(settings.db_url).get_backend_name() == "sqlite"


def create_app(settings: Settings | None = None) -> FastAPI:
    """One app with its own state (api.state.AppState), middleware, error handlers and routes."""
    settings = settings or get_settings()
    database = Database(settings.db_url)
    metrics = ApiMetrics(database.sessions)
    state = AppState(settings=settings, database=database, celery=make_celery(settings), metrics=metrics,
                     storage=storage_from_settings(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for folder in (settings.models_dir, settings.datasets_dir, settings.jobs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        tmp_dir(settings)
        temp_sweeper = await run_in_threadpool(TempSweeper(settings).start)  # what a killed process left
        if is_embedded(settings):
            await run_in_threadpool(upgrade_database, settings.db_url)
        log.info("API ready (data in %s)", settings.distill_home)
        try:
            yield
        finally:
            temp_sweeper.stop()
            await state.aclose()

    app = FastAPI(
        title="distill",
        # FastAPI's own OpenTelemetry hooks ask the global providers on every request; this service
        # exports Prometheus metrics (api.metrics), so they are off.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        version=API_VERSION,
        description=_DESCRIPTION,
        docs_url=None,  # served from packaged assets by api.docs_pages, not from a CDN
        redoc_url=None,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "jobs", "description": "Submit, follow, cancel jobs and download their artifacts."},
            {"name": "models", "description": "Teacher weights (safetensors) uploads."},
            {"name": "datasets", "description": "Dataset uploads (.zip ImageFolder tree or .npz)."},
            {"name": "sweeps", "description": "Grids of jobs over one base spec, with a leaderboard."},
            {"name": "health", "description": "Liveness, readiness and Prometheus metrics (no key needed)."},
        ],
    )
    # In place of Starlette's untyped State: `app.state.database` still reads, and api.deps hands it out typed.
    app.state = state  # type: ignore[assignment]
    install_error_handlers(app)
    # Added last, so it runs first: an oversized or too deep body is refused before anything reads it.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_json_kb * 1024, max_depth=settings.max_json_depth)
    # Outermost but metrics: a request without a valid key is refused before any body is read.
    app.add_middleware(ApiKeyMiddleware, settings=settings)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    _include_routes(app)
    return app


def _include_routes(app: FastAPI) -> None:
    """The documented routes behind the API key, after their fast-path twins and the open probes."""
    # The router tries routes in order: the polling routes' fast path first (api.fastpath), then the
    # probes, the most frequent requests with the least work.
    add_fast_routes(app)
    app.include_router(health.router)  # open: probes and scrapers carry no key
    for module in (jobs, models, datasets, sweeps):
        app.include_router(
            module.router,
            dependencies=[Depends(require_api_key)],
            responses={401: {"model": ErrorResponse, "description": "Missing or wrong bearer key."}},
        )
    mount_dashboard(app)  # static page at /ui (the API calls it makes carry the key)
    mount_docs(app)  # /docs and /redoc, offline
