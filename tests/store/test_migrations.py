"""The Alembic history builds exactly the schema the models declare, and can be undone and redone."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from store.db import downgrade_database, make_engine, upgrade_database
from store.models import Base


def _schema_differences(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_head_matches_the_models_exactly(empty_db_url: str) -> None:
    upgrade_database(empty_db_url)

    assert _schema_differences(empty_db_url) == []


def test_upgrade_downgrade_upgrade_round_trips(empty_db_url: str) -> None:
    model_tables = set(Base.metadata.tables)

    upgrade_database(empty_db_url)
    assert _tables(empty_db_url) == model_tables | {"alembic_version"}

    downgrade_database(empty_db_url, "base")
    assert _tables(empty_db_url) == {"alembic_version"}

    upgrade_database(empty_db_url)
    assert _tables(empty_db_url) == model_tables | {"alembic_version"}
    assert _schema_differences(empty_db_url) == []


def test_upgrade_is_a_no_op_on_an_up_to_date_database(db_url: str) -> None:
    upgrade_database(db_url)

    assert _schema_differences(db_url) == []
