"""Engine and session factory (CONTRACT; filled in by the store implementation).

- `make_engine(url)`: SQLite gets WAL, busy_timeout and foreign keys on connect;
  PostgreSQL (postgresql+psycopg://) gets a pool with pre_ping.
- `session_factory(engine)`: sessionmaker(expire_on_commit=False).
- `upgrade_database(url)`: alembic upgrade head (embedded mode runs it on start).
"""
