"""Shared fixtures: real PostgreSQL and Redis servers, migrated databases, Settings.

Servers start once per session and only when a test asks for them. `db_url`
runs each test that uses it twice, on SQLite and on PostgreSQL, each time on
a fresh database already migrated to head (copied from a migrated template, so
a test costs a file copy or a CREATE DATABASE, not a migration).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from store.db import Database, make_engine, upgrade_database
from store.settings import Settings
from tests.services import PostgresServer, S3Server, ServiceUnavailable, postgres_server, redis_server, s3_server

DB_BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (fails, never skips, when it cannot start)."""
    try:
        with postgres_server() as server:
            yield server
    except ServiceUnavailable as error:
        pytest.fail(f"PostgreSQL is required for this test: {error}", pytrace=False)


@pytest.fixture(scope="session")
def postgres_url(postgres: PostgresServer) -> str:
    """URL of an empty database created for the session in the session's server."""
    return postgres.url(postgres.create_database(prefix="distill"))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """redis://127.0.0.1:PORT/0 of a throwaway redis-server (no persistence)."""
    try:
        with redis_server() as server:
            yield server.url
    except ServiceUnavailable as error:
        pytest.fail(f"Redis is required for this test: {error}", pytrace=False)


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A real S3-compatible server process (moto_server) on loopback for the session."""
    try:
        with s3_server() as server:
            yield server
    except ServiceUnavailable as error:
        pytest.fail(f"an S3 server is required for this test: {error}", pytrace=False)


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """AWS_* variables pointing at the test server, set for this test; plus DISTILL_STORAGE_URL on a fresh bucket."""
    env = {**s3.environment(), "DISTILL_STORAGE_URL": f"s3://{s3.create_bucket()}/distill"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture(scope="session")
def _postgres_template(postgres: PostgresServer) -> str:
    """A database migrated to head, copied by CREATE DATABASE ... TEMPLATE for each test."""
    name = postgres.create_database(prefix="template")
    upgrade_database(postgres.url(name))
    return name


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "distill.db"
    url = f"sqlite:///{path}"
    upgrade_database(url)
    engine = make_engine(url)
    with engine.connect() as connection:  # fold the WAL into the main file so one file is the whole database
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


def _fresh_database(request: pytest.FixtureRequest, tmp_path: Path, migrated: bool) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "db" / "distill.db"
        if migrated:
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    template = request.getfixturevalue("_postgres_template") if migrated else None
    name = server.create_database(template=template)
    yield server.url(name)
    server.drop_database(name)


@pytest.fixture(params=DB_BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database migrated to head; the test runs once on SQLite and once on PostgreSQL."""
    yield from _fresh_database(request, tmp_path, migrated=True)


@pytest.fixture(params=DB_BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database with no tables at all (for migration tests), on SQLite and PostgreSQL."""
    yield from _fresh_database(request, tmp_path, migrated=False)


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    """Engine + sessions on `db_url`, disposed after the test."""
    db = Database(db_url)
    yield db
    db.dispose()


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Callable[..., Settings]:
    """Factory: settings(**overrides) -> Settings with DISTILL_HOME in tmp_path and DATABASE_URL = db_url.

    Overrides use the environment names (BROKER_URL=..., DISTILL_API_KEYS=...) or the field names.
    """
    aliases = {name: field.alias for name, field in Settings.model_fields.items() if field.alias}

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"DISTILL_HOME": tmp_path / "home", "DATABASE_URL": db_url}
        values.update({aliases.get(key, key): value for key, value in overrides.items()})
        return Settings(**values)

    return make


@pytest.fixture(scope="session", autouse=True)
def image_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Decoded-image stores (core.data.store) of this session in its own folder, never the user's cache;
    worker processes the tests start inherit it."""
    import os

    folder = tmp_path_factory.mktemp("image-cache")
    previous = os.environ.get("DISTILL_DATA_CACHE_DIR")
    os.environ["DISTILL_DATA_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("DISTILL_DATA_CACHE_DIR", None)
    else:
        os.environ["DISTILL_DATA_CACHE_DIR"] = previous
