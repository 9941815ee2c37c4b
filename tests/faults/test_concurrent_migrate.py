"""Several `distill migrate` processes at once on a fresh database: all succeed, the schema is at head once."""

from __future__ import annotations

import subprocess
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from store.db import MIGRATIONS_DIR, alembic_config, make_engine
from tests.e2e.conftest import DISTILL, clean_env

PROCESSES = 3


def test_concurrent_migrations_on_a_fresh_database_all_succeed(empty_db_url: str, tmp_path: Path) -> None:
    env = clean_env(DATABASE_URL=empty_db_url, DISTILL_HOME=str(tmp_path / "home"))
    started = [subprocess.Popen([DISTILL, "migrate"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for _ in range(PROCESSES)]
    outputs = [process.communicate(timeout=120)[0].decode(errors="replace") for process in started]

    assert [process.returncode for process in started] == [0] * PROCESSES, "\n".join(outputs)
    head = ScriptDirectory.from_config(alembic_config(empty_db_url)).get_current_head()
    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
            tables = set(inspect(connection).get_table_names())
    finally:
        engine.dispose()
    assert versions == [head]
    assert {"jobs", "artifacts", "models", "datasets", "workers"} <= tables
    assert MIGRATIONS_DIR.is_dir()
