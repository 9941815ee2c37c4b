"""Engine, sessions and schema migrations: the one place that knows how to reach the database.

SQLite (the embedded default) is tuned for several processes sharing one file:
WAL so readers never block the writer, a 30 s busy timeout so writers queue
instead of failing, and foreign keys on (SQLite leaves them off by default).
PostgreSQL (production): the write engine pings before each checkout and the read
engine reads again on a fresh connection (`read_with_retry`), so a restarted server
costs one retry, not a 500. Migrations run through Alembic programmatically, so they work from
any working directory and from an installed package.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool, StaticPool

from store.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30
T = TypeVar("T")


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL, or None for an in-memory database."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL: a power cut loses at most the last commits
    finally:
        cursor.close()


def load_json(text: str | bytes) -> Any:
    """JSON columns as Python: orjson (several times faster on a job's spec), json for what orjson refuses.

    The columns are written with `json.dumps`, which writes a non-finite float as `NaN`;
    orjson rejects that, so such a document falls back to the standard parser.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine configured for the backend named in `url` (extra kwargs go to create_engine)."""
    kwargs.setdefault("json_deserializer", load_json)
    if _is_sqlite(url):
        path = _sqlite_file(url)
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
        if path is None:
            # One shared connection, or every connection would see its own empty in-memory database.
            kwargs.setdefault("poolclass", StaticPool)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Objects stay readable after commit, so repository functions can return them to callers."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """Alembic configuration built in code: no ini file, no dependence on the working directory."""
    from alembic.config import Config  # imported here: only migrating pays for importing alembic

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("version_locations", str(MIGRATIONS_DIR / "versions"))
    # ConfigParser interpolates '%': escape it, or a password containing '%' breaks the URL.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


# Any fixed 64-bit number: the PostgreSQL advisory lock every `distill migrate` takes before migrating.
MIGRATION_LOCK_KEY = 0x64697374696C6C  # "distill"


@contextmanager
def migration_lock(url: str) -> Iterator[None]:
    """Only one process migrates a database at a time; the others wait, then find it at head.

    Two deploy steps (or API processes on SQLite) starting together would otherwise both try to
    create the same tables. PostgreSQL: a session advisory lock on its own connection, released
    when it closes even if the process dies. SQLite: an exclusive flock on a file next to the
    database. Other backends: no lock.
    """
    if _is_sqlite(url):
        path = _sqlite_file(url)
        if path is None:
            yield
            return
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".migrate.lock"), "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return
    if make_url(url).get_backend_name() != "postgresql":
        yield
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")
            connection.commit()
            try:
                yield
            finally:
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")
                connection.commit()
    finally:
        engine.dispose()


def upgrade_database(url: str, revision: str = "head") -> None:
    """Bring the schema to `revision` (head by default); a no-op on an up-to-date database.

    Safe to run from several processes at once (see `migration_lock`)."""
    from alembic import command

    logger.info("migrating database %s to %s", make_url(url).render_as_string(hide_password=True), revision)
    with migration_lock(url):
        command.upgrade(alembic_config(url), revision)


def downgrade_database(url: str, revision: str) -> None:
    """Step the schema back to `revision` ('base' removes every table)."""
    from alembic import command

    logger.info("downgrading database %s to %s", make_url(url).render_as_string(hide_password=True), revision)
    command.downgrade(alembic_config(url), revision)


def read_engine(url: str, engine: Engine, **kwargs: Any) -> Engine:
    """The engine for reads that need no transaction: `engine` itself on SQLite, an autocommit twin elsewhere.

    A poll is one or two SELECTs. In a transaction, PostgreSQL costs a BEGIN before them and a
    COMMIT (or the pool's ROLLBACK) after: two extra round trips that do nothing for a read.
    On an autocommit connection each SELECT is its own statement, and returning the connection
    to the pool costs nothing. SQLite's driver opens no transaction for a SELECT in the first
    place, so there the one engine serves both.
    """
    if _is_sqlite(url):
        return engine
    # No pre-ping: it is one more round trip per checkout, i.e. per poll. A connection the server
    # dropped fails its read instead, and `read_with_retry` reads again on a fresh one.
    kwargs.setdefault("json_deserializer", load_json)
    return create_engine(url, isolation_level="AUTOCOMMIT", **kwargs)


def read_with_retry(engine: Engine, function: Callable[..., T], *args: Any) -> T:
    """`function(connection, *args)` on a connection of `engine`; once more on a fresh one if the first was dead.

    For reads only (running one twice changes nothing). When the server restarted, every pooled
    connection is stale: SQLAlchemy invalidates the pool on the first disconnect error, so the
    retry gets a new connection and the client never sees the restart.
    """
    try:
        with engine.connect() as connection:
            return function(connection, *args)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        logger.warning("database connection lost (%s); reading again on a new one", type(exc.orig).__name__)
    with engine.connect() as connection:
        return function(connection, *args)


class Database:
    """One engine and its session factory, shared by everything in a process (API, worker, CLI).

    `reader` is for code that only reads and never commits (the API's polling routes): see `read_engine`.
    """

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self.sessions = session_factory(self.engine)
        self.reader = read_engine(url, self.engine, **engine_kwargs)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(settings.db_url)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session closed on exit; repository functions commit themselves, anything left is rolled back."""
        with self.sessions() as session:
            yield session

    def upgrade(self) -> None:
        upgrade_database(self.url)

    def dispose(self) -> None:
        self.engine.dispose()
        if self.reader is not self.engine:
            self.reader.dispose()
