"""Fault and abuse tests. The API fixtures of tests/api (a real app on SQLite and PostgreSQL) are reused here."""

from tests.api.conftest import client, make_client  # noqa: F401 - fixtures, re-exported for these tests
