"""What one app holds for every request: settings, database, broker client, caches, as one typed object.

`create_app` builds one `AppState` and puts it where Starlette keeps `app.state`, so
`request.app.state.settings` (and `app.state.database` in tests and scripts) still
reads the same things, while the code in `api/` gets them with types through
`api.deps.StateDep` (routes) or `scope["app"].state` (the fast path). Two apps in one
process (tests, the embedded server) each have their own; nothing here is global.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from celery import Celery
from starlette.concurrency import run_in_threadpool

from api.documents import DocumentCache
from api.events import EventHub, EventStreamConfig
from api.metrics import ApiMetrics
from api.services.upload_checks import UploadChecks
from store import repository
from store.async_reads import AsyncVersionLookup, supports_async_reads
from store.db import Database
from store.settings import Settings
from store.storage import Storage

if TYPE_CHECKING:  # api.ratelimit reads the state through api.deps, which imports this module
    from api.ratelimit import RateLimiter

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class AppState:
    """One app's shared objects; the lookups and the event hub are derived from the database on creation."""

    settings: Settings
    database: Database
    celery: Celery
    metrics: ApiMetrics
    storage: Storage
    # Settings the tests shorten (poll interval, keep-alive): read on every stream start, so it may be replaced.
    event_stream: EventStreamConfig = field(default_factory=EventStreamConfig)
    # Encoded job documents by (id, version, view): a poll of an unchanged job is answered from here.
    documents: DocumentCache = field(default_factory=DocumentCache)
    # Made on the first rate-limited request (api.ratelimit), and again when the configured limit changes.
    rate_limiter: RateLimiter | None = None
    # SQLite: reads run inline on the event loop (see `run_read`).
    inline_reads: bool = field(init=False)
    # Inline reads all run on the event loop's thread, which keeps one connection for the version lookups.
    versions: repository.VersionLookup | None = field(init=False)
    # PostgreSQL (psycopg): the polls' lookups on async connections the event loop waits on (no thread).
    async_versions: AsyncVersionLookup | None = field(init=False)
    # One poller per followed job, shared by every stream that follows it (api.events).
    event_hub: EventHub = field(init=False)
    # The dataset uploads' checking processes (api.services.upload_checks), at most DISTILL_UPLOAD_CHECKS at once.
    upload_checks: UploadChecks = field(init=False)

    def __post_init__(self) -> None:
        """Derive what depends on the database dialect, so no caller can build a state that disagrees with it."""
        reader = self.database.reader
        self.inline_reads = reader.dialect.name == "sqlite"
        self.versions = repository.VersionLookup(reader) if self.inline_reads else None
        self.async_versions = AsyncVersionLookup(reader) if supports_async_reads(reader) else None
        self.event_hub = EventHub(reader, lambda: self.event_stream)
        self.upload_checks = UploadChecks(self.settings.upload_checks, self.settings.max_image_pixels)

    async def run_read(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a short read-only database call: inline on SQLite, in the thread pool elsewhere.

        A SQLite read is CPU work in this process (a page-cache lookup in WAL mode, where readers
        never wait for the writer): a thread would not run it any sooner under the GIL, and the hop
        there and back costs about as much as the read. A PostgreSQL read waits on a socket, so
        there the event loop serves other requests meanwhile.
        """
        if self.inline_reads:
            return function(*args, **kwargs)
        return await run_in_threadpool(function, *args, **kwargs)

    async def aclose(self) -> None:
        """Release the broker client, the lookups' own connections and the pools, in that order (app shutdown)."""
        self.celery.close()
        self.upload_checks.close()
        if self.versions is not None:
            self.versions.close()
        if self.async_versions is not None:
            await self.async_versions.aclose()
        self.database.dispose()
