"""One engine per database URL, one way to open a transaction.

Flows own the transaction: ``with transaction() as session: ...`` commits at the end or rolls
back on error. Helpers take a session and never commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, event
from sqlmodel import Session, create_engine

from psync.settings import get_settings


# hide_parameters: SQLAlchemy's error messages otherwise quote the bound values, which are
# e-mail addresses and IPs here, into exceptions that end up in logs and Prefect's UI.
def get_engine(url: str | None = None) -> Engine:
    """The engine for `url` (default: the configured database), created once per process."""
    # Resolve the default before the cache: keyed on None, a changed setting would be missed.
    return _engine(url or get_settings().database_url)


@lru_cache(maxsize=8)
def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            hide_parameters=True,
        )
        _sqlite_immediate_transactions(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, hide_parameters=True)


def _sqlite_immediate_transactions(engine: Engine) -> None:
    # pysqlite opens transactions lazily and as DEFERRED; two writers that both read first
    # then deadlock with "database is locked". BEGIN IMMEDIATE takes the write lock up
    # front (SQLAlchemy's documented recipe), and WAL lets readers carry on meanwhile.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def transaction(url: str | None = None) -> Iterator[Session]:
    """A session whose work is committed at the end of the block, or rolled back on error."""
    with Session(get_engine(url), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
