"""Prometheus metrics: HTTP traffic from a middleware, job counts from the database at scrape time.

Each app gets its own registry so several apps (tests, embedded mode) never
collide on metric names. With several API processes (`distill api --workers N`)
prometheus_client's multiprocess mode is on (`PROMETHEUS_MULTIPROC_DIR`, set by
the CLI before the processes start): each process writes its counters and
histograms to files there, and a scrape, whichever process answers it, sums
them all; the job gauges are counted in SQL once per scrape, not per process. Requests are labelled by route *template*
(`/v1/jobs/{job_id}`), never by raw path, so label cardinality stays bounded.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from store.models import JobStatus
from store.repository import count_jobs_by_status

log = logging.getLogger(__name__)

UNMATCHED_ROUTE = "unmatched"
# prometheus_client reads it when first imported: it must be set before an API process starts.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class JobsCollector(Collector):
    """`distill_jobs{status}` and `distill_queue_depth`, counted in SQL (the row is the truth) on each scrape."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def describe(self) -> Iterator[Metric]:
        # Declared without samples so registering does not query the database.
        yield GaugeMetricFamily("distill_jobs", "Jobs by state.", labels=["status"])
        yield GaugeMetricFamily("distill_queue_depth", "Jobs waiting for a worker (state queued).")

    def collect(self) -> Iterator[Metric]:
        try:
            with self.sessions() as session:
                raw_counts = count_jobs_by_status(session)
        except Exception:
            log.exception("metrics: cannot count jobs; job gauges left out of this scrape")
            return
        counts = {str(getattr(status, "value", status)): int(n) for status, n in raw_counts.items()}
        jobs = GaugeMetricFamily("distill_jobs", "Jobs by state.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        yield jobs
        yield GaugeMetricFamily(
            "distill_queue_depth", "Jobs waiting for a worker (state queued).", value=counts.get("queued", 0)
        )


class ApiMetrics:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "distill_http_requests", "HTTP requests handled.", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "distill_http_request_duration_seconds",
            "Time from request start to the end of the response body.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.jobs = JobsCollector(sessions)
        self.registry.register(self.jobs)

    def observe(self, method: str, route: str, status: int, duration_s: float) -> None:
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(duration_s)

    def render(self) -> bytes:
        folder = multiprocess_folder()
        if folder is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)
        registry.register(self.jobs)
        return generate_latest(registry)


def multiprocess_folder() -> str | None:
    """Where the API processes share their metrics, or None for a single process."""
    return os.environ.get(MULTIPROC_ENV) or None


class MetricsMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware) so streamed responses such as SSE pass through untouched."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")  # set by the router on the shared scope once a route matched
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            self.metrics.observe(scope.get("method", "GET"), template, status, time.perf_counter() - started)
