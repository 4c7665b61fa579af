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

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from functools import lru_cache
from itertools import repeat
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from sqlalchemy import DateTime, Engine, bindparam, event, update
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import Insert
from sqlmodel import Session, SQLModel, create_engine

from core.settings import get_settings


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
        if path and path != ":memory:":
            _Checkpointer.start(engine)
    else:
        engine = create_engine(url, pool_pre_ping=True, hide_parameters=True)
    _ENGINES.add(engine)
    return engine


# Every engine made here, so that their pooled connections are closed when the process
# ends: on SQLite the last connection to close checkpoints the WAL into the database file
# and deletes it, so no stale row versions stay behind in psync.db-wal. Weak: an engine the
# cache dropped is not kept alive for this.
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _dispose_engines() -> None:
    _Checkpointer.stop_all()  # first: the last connection to close then checkpoints alone
    for engine in list(_ENGINES):
        engine.dispose()


class _Checkpointer:
    """Copies a SQLite database's WAL back into its file on a thread of its own.

    SQLite checkpoints in whichever commit finds the WAL over ``wal_autocheckpoint`` pages:
    that commit then copies tens of megabytes and fsyncs before it returns (0.1 s in the
    middle of an incremental newsletter sync, after the intake before it filled the WAL).
    Here every commit only wakes this thread, which runs a PASSIVE checkpoint (it waits for
    no reader or writer) at most every ``interval`` seconds, while the committing thread
    goes on: SQLite's own advice for applications that mind commit latency ("checkpoints
    in a separate thread", https://sqlite.org/wal.html#application_initiated_checkpoints).
    The WAL then rarely reaches the automatic limit, which stays as the backstop.

    The thread holds the engine weakly and ends when the engine is gone or at exit.
    """

    _running: ClassVar[weakref.WeakSet[_Checkpointer]] = weakref.WeakSet()

    def __init__(self, engine: Engine, interval: float):
        self._engine = weakref.ref(engine)
        self.interval = interval
        self.wanted = threading.Event()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="psync-sqlite-checkpoint", daemon=True)

    @classmethod
    def start(cls, engine: Engine, interval: float = 0.2) -> _Checkpointer:
        checkpointer = cls(engine, interval)
        event.listen(engine, "commit", lambda _connection: checkpointer.wanted.set())
        cls._running.add(checkpointer)
        checkpointer.thread.start()
        return checkpointer

    @classmethod
    def stop_all(cls, timeout: float = 5.0) -> None:
        for checkpointer in list(cls._running):
            checkpointer.stopped = True
            checkpointer.wanted.set()
        for checkpointer in list(cls._running):
            checkpointer.thread.join(timeout)

    def _run(self) -> None:
        while not self.stopped:
            if not self.wanted.wait(timeout=1.0):
                if self._engine() is None:
                    return
                continue
            self.wanted.clear()
            engine = self._engine()
            if engine is None or self.stopped:
                return
            try:
                _wal_checkpoint(engine, "PASSIVE")
            except Exception:  # a removed database, a disposed engine: the backstop remains
                logging.getLogger(__name__).debug("background WAL checkpoint skipped", exc_info=True)
            del engine
            time.sleep(self.interval)  # at most one checkpoint per interval, however many commits


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
        # Freed space (a deleted row, the old value of an updated cell, a dropped page) is
        # overwritten with zeros instead of left in place. Set here, not trusted to the
        # build's default: an erased IBAN must not live on in a free page.
        cursor.execute("PRAGMA secure_delete=ON")
        # Checkpoint (copy the WAL back and fsync) every ~40 MB instead of every ~4 MB: one
        # sync batch dirties over a thousand pages (random index pages), so at SQLite's
        # default every commit paid a checkpoint: 20-50 ms a commit, 3-5 ms now.
        cursor.execute("PRAGMA wal_autocheckpoint=10000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def transaction(url: str | None = None, cache_mb: int | None = None) -> Iterator[Session]:
    """A session whose work is committed at the end of the block, or rolled back on error.

    `cache_mb`: SQLite's page cache for this transaction, for one that writes thousands of
    rows (a chunk of a file's intake). Its rows land on random pages of several indexes;
    past the default cache (2 MB) SQLite spills dirty pages to the WAL before the commit and
    reads and writes them again: at 5,000 consent lines a chunk, its INSERTs took twice as
    long. The connection goes back to the pool with the default cache again.
    """
    with Session(get_engine(url), expire_on_commit=False) as session:
        default = _cache_size(session, -1024 * cache_mb) if cache_mb else None
        try:
            yield session
            if default is not None:
                _cache_size(session, default)
            session.commit()
        except BaseException:
            if default is not None:
                with suppress(Exception):  # the connection may be gone with the error
                    _cache_size(session, default)
            session.rollback()
            raise


def _cache_size(session: Session, size: int) -> int | None:
    """Set SQLite's ``cache_size`` (pages, or KiB when negative) on the session's connection;
    the size it had. None, and nothing done, on PostgreSQL."""
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        return None
    before = connection.exec_driver_sql("PRAGMA cache_size").scalar_one()
    connection.exec_driver_sql(f"PRAGMA cache_size={int(size)}")
    return int(before)


def checkpoint(url: str | None = None) -> None:
    """Copy SQLite's WAL into the database file now (PASSIVE: it waits for no reader or
    writer), what the background checkpointer (``_Checkpointer``) would do a moment later.

    For a bulk writer at its end (a file's intake): its pages are copied, and the file
    synced, while it still runs, instead of under the next job's first commits. Nothing on
    PostgreSQL.
    """
    engine = get_engine(url)
    if engine.dialect.name == "sqlite":
        _wal_checkpoint(engine, "PASSIVE")


def _wal_checkpoint(engine: Engine, mode: str) -> int:
    """``PRAGMA wal_checkpoint(<mode>)`` on a SQLite engine; its busy flag (0: complete).

    On the driver's connection, in autocommit (isolation_level None, set on connect): a
    checkpoint cannot copy pages that a transaction of its own connection still reads.
    """
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        busy, _log_frames, _copied = cursor.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        cursor.close()
    finally:
        connection.close()
    return int(busy)


def scrub_journal(bind: Session | Engine | None = None) -> bool:
    """Copy SQLite's WAL back into the database file and truncate it to zero bytes.

    Call after a transaction that erased personal data (an erasure, a purge, an expiry) has
    committed, outside any transaction. The WAL holds every committed version of every page
    until a checkpoint copies the newest back; with ``secure_delete`` the database file then
    holds only the zeroed page, and TRUNCATE empties the WAL file, so the old versions (the
    erased e-mail, name, IBAN) are gone from both. Waits (busy timeout) for readers still on
    an older snapshot. Returns True when the checkpoint completed; on PostgreSQL (no WAL of
    ours to scrub; see ``psync db compact``) it does nothing and returns True.
    """
    if bind is None:
        engine = get_engine()
    elif isinstance(bind, Session):
        engine = bind.get_bind()  # type: ignore[assignment]  # a session here is bound to an engine, never a connection
    else:
        engine = bind
    if engine.dialect.name != "sqlite":
        return True
    busy = _wal_checkpoint(engine, "TRUNCATE")
    if busy:  # rare: the busy timeout ran out on a long reader; the next scrub or exit retries
        logging.getLogger(__name__).warning("WAL checkpoint incomplete: a reader held an older snapshot")
    return busy == 0


def compact(tables: Iterable[str], url: str | None = None) -> dict[str, float]:
    """Rewrite `tables` so that no old version of their rows stays in the database's files;
    returns the seconds each took. Run after erasures have committed, off-peak.

    PostgreSQL keeps an updated or deleted row's old version (an erased e-mail, a deleted
    document) in the table's file until VACUUM marks the space free and a later row happens
    to overwrite it. ``VACUUM (FULL, ANALYZE)`` writes each table, its TOAST and indexes anew
    and drops the old files; ANALYZE replaces the planner's statistics, whose sampled values
    (most common values, histogram bounds) could name erased people, and ``pg_statistic`` is
    then rewritten too where the role may (a superuser; otherwise PostgreSQL skips it with
    a warning). Cost: each table is locked ACCESS EXCLUSIVE while it is rewritten, so every
    read and write of it waits, for about as long as copying the table takes.

    SQLite (``secure_delete`` zeroes freed space already) gets a ``VACUUM`` of the whole file
    and its WAL truncated (``scrub_journal``); the tables are not looked at one by one, and
    the time is reported under "*".
    """
    engine = get_engine(url)
    seconds: dict[str, float] = {}
    if engine.dialect.name == "sqlite":
        # The driver's connection: VACUUM cannot run inside the BEGIN IMMEDIATE of ours.
        connection = engine.raw_connection()
        try:
            started = time.perf_counter()
            connection.cursor().execute("VACUUM")
            seconds["*"] = time.perf_counter() - started
        finally:
            connection.close()
        scrub_journal(engine)
        return seconds
    quote = engine.dialect.identifier_preparer.quote
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as autocommit:
        for name in tables:
            started = time.perf_counter()
            autocommit.exec_driver_sql(f"VACUUM (FULL, ANALYZE) {quote(name)}")
            seconds[name] = time.perf_counter() - started
        autocommit.exec_driver_sql("VACUUM FULL pg_catalog.pg_statistic")
    return seconds


# INSERT … ON CONFLICT is dialect syntax; these are the two databases the project runs on.
# Each returns its dialect's own Insert (both have on_conflict_*; they share no such type).
INSERT_BY_DIALECT: dict[str, Callable[[Any], Any]] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def insert_missing(session: Session, model: type[SQLModel], **key: object) -> None:
    """Insert the row of `model` with this primary key and column defaults, unless it exists.

    INSERT … ON CONFLICT DO NOTHING: of two transactions creating the same row at once, the
    second waits for the first and then does nothing, where an ORM add would fail it with a
    unique violation. Read the row afterwards (with a lock, if it is to be changed).
    """
    table = model.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
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


def claim_rows(
    session: Session,
    model: type[SQLModel],
    condition: Any,
    order_by: Sequence[Any],
    owner: str,
    until: datetime,
    limit: int | None = None,
) -> list[Any]:
    """Claim the rows of `model` matching `condition` for `owner` until `until`: their ids.

    The model has ``id``, ``claimed_by`` and ``claimed_until``; `condition` says which rows a
    run may take (and should exclude rows whose claim still stands). One UPDATE sets the
    claim, so of two runs at once only one gets a row: on PostgreSQL the candidates are
    locked with FOR UPDATE SKIP LOCKED, on SQLite the write transaction (BEGIN IMMEDIATE)
    serialises the two. The ORM's copies are expired, so the rows read afterwards are fresh.
    """
    table = model.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
    candidates = sa_select(table.c.id).where(condition).order_by(*order_by)
    if limit is not None:
        candidates = candidates.limit(limit)
    # A CTE, not a plain subquery: PostgreSQL may run a subquery again per row, and with
    # LIMIT and SKIP LOCKED each run can pick other rows; a locking CTE runs exactly once.
    chosen = skip_locked(candidates, model).cte("chosen")
    statement = (
        update(table)
        .where(table.c.id.in_(sa_select(chosen.c.id)), condition)
        .values(claimed_by=owner, claimed_until=until)
        .returning(table.c.id)
    )
    claimed = list(session.connection().execute(statement).scalars())
    session.expire_all()
    return claimed


class PlainRow:
    """A table row as plain attributes (a subclass's ``__slots__``: the table's columns), and
    whether it is in the database yet (``stored``). For rows read and written by the
    thousand (``write_plain_rows``), where an ORM object's attribute events, unit of work
    and identity map would cost more than the rest of the work."""

    __slots__ = ("stored",)

    def __init__(self, stored: bool, values: Iterable[tuple[str, Any]]):
        self.stored = stored
        for name, value in values:
            setattr(self, name, value)


def write_plain_rows(
    session: Session,
    rows: Iterable[PlainRow],
    table: Any,
    columns: Sequence[str],
    changing: Sequence[str],
) -> None:
    """Insert the new ones of `rows` (``insert_many``), update the stored ones (their
    `changing` columns, by ``id``), each with one statement for all; the new ones are
    stored then."""
    new: list[PlainRow] = []
    stored: list[PlainRow] = []
    for row in rows:
        (stored if row.stored else new).append(row)
    # attrgetter reads a row's columns into a tuple in C: a comprehension cost a Python
    # step per column and row.
    insert_many(session, _insert_of(table), columns, list(map(_getter(tuple(columns)), new)))
    if stored:
        changed, keys = _getter(("id", *changing)), ("row_id", *changing)
        session.connection().execute(_update_by_id(table), [dict(zip(keys, changed(r), strict=True)) for r in stored])
    for row in new:
        row.stored = True


@lru_cache(maxsize=32)
def _getter(columns: tuple[str, ...]) -> Callable[[Any], tuple]:
    """A row's values of `columns`, as a tuple (also for a single column)."""
    getter = attrgetter(*columns)
    return getter if len(columns) > 1 else lambda row: (getter(row),)


@lru_cache(maxsize=16)
def _insert_of(table: Any) -> Insert:
    return table.insert()


@lru_cache(maxsize=16)
def _update_by_id(table: Any) -> Any:
    return table.update().where(table.c.id == bindparam("row_id"))


def insert_many(
    session: Session,
    statement: Insert,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    same: Mapping[str, Any] | None = None,
) -> None:
    """Execute an INSERT for many rows directly on the driver's ``executemany``.

    For rows written by the thousand (audit rows, register rows): Core's executemany builds
    and type-processes a parameter dict per row, which costs more than SQLite's own work.
    Here the statement is compiled once per dialect and column set, values are processed
    with the columns' own types a column at a time, and `same` (values every row shares)
    only once. `rows` are tuples in `columns` order; the statement may take no other
    parameters.
    """
    if not rows:
        return
    same = same or {}
    connection = session.connection()
    sql, processors, arrange, repeating = _compiled(statement, connection.dialect, (*columns, *same))
    values: list[Iterable[Any]] = list(zip(*rows, strict=True))
    for index, processor in processors.items():
        if index < len(columns):
            values[index] = _processed(processor, values[index], index in repeating)
    values += [
        repeat(processors[index](value) if index in processors else value)
        for index, value in enumerate(same.values(), start=len(columns))
    ]
    # `same` columns are endless repeats: the rows end it.
    connection.exec_driver_sql(sql, list(map(arrange, zip(*values, strict=False))))


def _processed(processor: Callable[[Any], Any], column: Sequence[Any], repeating: bool) -> Iterable[Any]:
    """A column's values through its bind processor; for a column whose values often repeat
    (a time column a chunk fills with its one clock reading), once per distinct value."""
    if repeating:
        try:
            distinct = dict.fromkeys(column)
        except TypeError:  # an unhashable value: each on its own
            return map(processor, column)
        if len(distinct) * 2 <= len(column):
            for value in distinct:
                distinct[value] = processor(value)
            return map(distinct.__getitem__, column)
    return map(processor, column)


def _compiled(statement: Insert, dialect: Dialect, keys: tuple[str, ...]) -> tuple:
    """(SQL text, bind processors by key index, parameter-set builder, the indexes of time
    columns), once per key set."""
    memo = (id(statement), dialect.name, keys)
    found = _COMPILED.get(memo)
    if found is not None and found[0] is statement:
        return found[1:]
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    table = statement.table.c
    processors = {
        index: processor
        for index, key in enumerate(keys)
        if (processor := table[key].type.dialect_impl(dialect).bind_processor(dialect))
    }
    if compiled.positional:
        order = [keys.index(name) for name in compiled.positiontup or ()]
        arrange: Callable[[Any], Any] = itemgetter(*order) if len(order) > 1 else (lambda row: (row[order[0]],))
    else:
        arrange = lambda row: dict(zip(keys, row, strict=True))  # noqa: E731 - one expression, kept beside its alternative
    # Time columns: equal values make equal stored values (a time is converted to UTC), so
    # each distinct one is processed once. Not every type's: 1, 1.0 and True are equal keys.
    repeating = frozenset(
        index
        for index in processors
        if isinstance(table[keys[index]].type, DateTime)
        or isinstance(getattr(table[keys[index]].type, "impl", None), DateTime)
    )
    _COMPILED[memo] = (statement, compiled.string, processors, arrange, repeating)
    return compiled.string, processors, arrange, repeating


_COMPILED: dict[tuple, tuple] = {}
