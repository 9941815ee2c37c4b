"""The session servers the whole suite relies on are real and reachable."""

from __future__ import annotations

import pytest
import redis
from sqlalchemy import text

from store.db import make_engine


@pytest.mark.redis
def test_redis_url_points_at_a_live_server_without_persistence(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
        client.set("probe", "1")
        assert client.get("probe") == b"1"
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
    finally:
        client.close()


@pytest.mark.postgres
def test_postgres_url_points_at_a_live_postgresql_server(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SHOW server_version_num")).scalar_one().isdigit()
    finally:
        engine.dispose()
