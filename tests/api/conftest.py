"""API test fixtures: a real app (create_app) on a fresh migrated database - SQLite and PostgreSQL - with
DISTILL_HOME in tmp_path and the real kombu filesystem transport as broker (no BROKER_URL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.events import EventStreamConfig
from store.db import Database
from store.settings import Settings

# Fast polls so SSE tests take a fraction of a second; keep-alives only where a test asks for them.
TEST_EVENT_STREAM = EventStreamConfig(poll_interval_s=0.05, keepalive_s=60.0)


@pytest.fixture
def make_client(settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    """Factory: make_client(**setting_overrides) -> a started TestClient (lifespan run), closed after the test."""
    with ExitStack() as stack:

        def make(raise_server_exceptions: bool = True, **overrides: Any) -> TestClient:
            app = create_app(settings(**overrides))
            app.state.event_stream = TEST_EVENT_STREAM
            return stack.enter_context(TestClient(app, raise_server_exceptions=raise_server_exceptions))

        yield make


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture
def app_settings(client: TestClient) -> Settings:
    return client.app.state.settings  # type: ignore[attr-defined]


@pytest.fixture
def db(client: TestClient) -> Database:
    """The app's own Database, for moving jobs through the repository as a worker would."""
    return client.app.state.database  # type: ignore[attr-defined]
