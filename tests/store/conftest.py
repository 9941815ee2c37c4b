from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session

from store.db import Database


@pytest.fixture
def session(database: Database) -> Iterator[Session]:
    with database.session() as session:
        yield session
