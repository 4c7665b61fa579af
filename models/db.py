"""One engine per database URL, one way to open a transaction, two ways to share work.

Flows own the transaction: ``with transaction() as session: ...`` commits at the end or rolls
back on error. Helpers take a session and never commit.

Several workers may run the same deployment at once (processes, machines). On PostgreSQL the
rows they work on are claimed by row locks held until the transaction ends: an ordered stream
locks its cursor row and waits for it (``models.cursors.get_cursor``), a set of independent
work items is read with ``skip_locked`` so each worker takes rows no other one holds. On
SQLite, BEGIN IMMEDIATE serialises every writing transaction, which claims as much.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import Select
from sqlmodel import Session, SQLModel, create_engine

from psync.settings import get_settings


class _NoRowLogging(logging.Filter):
    """Drops SQLAlchemy's DEBUG record of each result row: rows are names, e-mail addresses,
    IBANs. Whoever turns ``sqlalchemy.engine`` up to DEBUG (or ships it to Prefect's logs)
    still gets statements, timings and column names; `hide_parameters` covers only the
    bound values, not the rows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Row %r"


# The logger every engine here writes to (none is given a logging_name).
logging.getLogger("sqlalchemy.engine.Engine").addFilter(_NoRowLogging())


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
        # Checkpoint (copy the WAL back and fsync) every ~40 MB instead of every ~4 MB: one
        # sync batch dirties over a thousand pages (random index pages), so at SQLite's
        # default every commit paid a checkpoint: 20-50 ms a commit, 3-5 ms now.
        cursor.execute("PRAGMA wal_autocheckpoint=10000")
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


# INSERT … ON CONFLICT is dialect syntax; these are the two databases the project runs on.
INSERT_BY_DIALECT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def insert_missing(session: Session, model: type[SQLModel], **key: object) -> None:
    """Insert the row of `model` with this primary key and column defaults, unless it exists.

    INSERT … ON CONFLICT DO NOTHING: of two transactions creating the same row at once, the
    second waits for the first and then does nothing, where an ORM add would fail it with a
    unique violation. Read the row afterwards (with a lock, if it is to be changed).
    """
    table = model.__table__  # type: ignore[attr-defined]
    insert = INSERT_BY_DIALECT[session.get_bind().dialect.name]
    session.connection().execute(insert(table).values(**key).on_conflict_do_nothing())


Query = TypeVar("Query", bound=Select)


def skip_locked(query: Query, model: type[SQLModel]) -> Query:
    """`query` claiming the rows of `model` it returns: FOR UPDATE OF that table SKIP LOCKED.

    For a set of independent work items read inside the transaction that works them: a
    second worker skips the rows the first one holds (and takes the next ones) instead of
    acting on them too, or waiting. Rows of joined tables stay unlocked. SQLite has no row
    locks; SQLAlchemy leaves the clause out there, and BEGIN IMMEDIATE serialises anyway.

    Example::

        rows = session.exec(skip_locked(select(Booking).where(...).limit(500), Booking))
    """
    return query.with_for_update(skip_locked=True, of=model)
