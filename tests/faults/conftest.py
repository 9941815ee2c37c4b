"""Fault and abuse tests. Fixtures of tests/api (a real app on SQLite and PostgreSQL) and tests/e2e (stacks of
real processes) are reused here."""

from tests.api.conftest import client, make_client  # noqa: F401 - fixtures, re-exported for these tests
from tests.e2e.conftest import sqlite_url, stacks  # noqa: F401
