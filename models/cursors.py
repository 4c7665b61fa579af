"""Sync cursors and the change counter they compare against."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Text, update
from sqlmodel import Field, Session, SQLModel, col, select

from models.db import get_engine, insert_missing, transaction
from models.types import UTCDateTime, classify, utcnow


class Counter(SQLModel, table=True):
    """Named monotonic counters; a row lock on PostgreSQL orders them by commit."""

    __tablename__ = "counter"

    name: str = Field(primary_key=True, max_length=60)
    value: int = 0


class SyncCursor(SQLModel, table=True):
    __tablename__ = "sync_cursor"

    name: str = Field(primary_key=True, max_length=100)
    position: int = 0
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # The next batch, written ahead by the batch before (``flows.delivery``): the `ahead_count`
    # records after position `ahead_after`, up to seq `ahead_through`. Good for one batch of
    # that size starting exactly there; anything else writes ahead as usual.
    ahead_after: int | None = None
    ahead_through: int | None = None
    ahead_count: int | None = None
    # Whom that write-ahead left out, being erased or held back (JSON: {"erasing": [subject
    # ids], "paused": [...]}, None for nobody): the batch that sends it holds them too.
    ahead_left_out: str | None = Field(default=None, sa_type=Text)


classify(Counter, not_personal=["name", "value"])
classify(
    SyncCursor,
    not_personal=["name", "position", "updated_at", "ahead_after", "ahead_through", "ahead_count"],
    pseudonymous=["ahead_left_out"],
)


def next_seq(session: Session, name: str, count: int = 1) -> int:
    """Reserve `count` numbers of counter `name`; returns the first.

    The UPDATE holds the row lock until commit, so on PostgreSQL a reader never sees number
    n+1 committed before n; on SQLite the whole write transaction is serialised anyway. A
    missing counter is created with ``insert_missing``, so two first writers do not collide.
    """
    if session.get(Counter, name) is None:
        insert_missing(session, Counter, name=name)
    result = session.execute(
        update(Counter)
        .where(col(Counter.name) == name)
        .values(value=col(Counter.value) + count)
        .returning(col(Counter.value))
    )
    return result.scalar_one() - count + 1


def get_cursor(session: Session, name: str) -> SyncCursor:
    """The cursor `name` (created at 0 if missing), locked until the transaction ends.

    A sync reads its cursor, sends the batch after it and advances it in one transaction.
    On PostgreSQL the row lock (FOR UPDATE, waiting: not skipping) makes a second worker
    running the same sync wait for the first one's commit and then read the advanced
    position, so it takes the next batch instead of sending the same one again. On SQLite
    BEGIN IMMEDIATE serialises the two transactions already.

    Example::

        with transaction() as session:
            after = get_cursor(session, "timify:bookings").position
            ...  # send what changed after it
            advance_cursor(session, "timify:bookings", last_sent)
    """
    cursor = session.get(SyncCursor, name, with_for_update=True)
    if cursor is None:
        insert_missing(session, SyncCursor, name=name)
        cursor = session.get(SyncCursor, name, with_for_update=True)
        assert cursor is not None
    return cursor


def cursor_position(session: Session, name: str) -> int:
    """Where cursor `name` stands now (0 if missing), read without a lock.

    For planning only (how many batches to start): it may be one batch behind a worker
    that is committing, which costs a task that finds nothing. The batch itself reads its
    position with ``get_cursor``.
    """
    cursor = session.get(SyncCursor, name)
    return cursor.position if cursor else 0


def advance_cursor(session: Session, name: str, position: int) -> None:
    """Move the cursor forward (never back).

    Takes the row ``get_cursor`` locked in this transaction without asking the database
    again (a flow may advance once per item), or locks it now if it is not loaded yet.
    """
    loaded = session.identity_map.get(session.identity_key(SyncCursor, name))
    cursor = loaded if loaded is not None else get_cursor(session, name)
    if position > cursor.position:
        cursor.position = position
        cursor.updated_at = utcnow()


def await_deliveries(url: str | None = None) -> int:
    """Wait until every delivery that holds a sync cursor now has ended; how many cursors.

    An erasure's barrier on PostgreSQL: a delivery (``flows.delivery``, step 2) looks once,
    right after taking its cursor, at who is being erased, then keeps calls in flight until
    its commit, so one that started before the request opened may still land a person's
    data after the erasure's delete. Taking each cursor in turn waits for such a delivery;
    one that takes its cursor later sees the request and holds the person back. One cursor
    at a time, each in a transaction of its own: never one held while waiting for another,
    so no deadlock with a delivery that holds several.

    Nothing to wait for on SQLite: there the request's opening, a write, already waited for
    the writer that was sending.
    """
    if get_engine(url).dialect.name == "sqlite":
        return 0
    with transaction(url) as session:
        names = list(session.exec(select(SyncCursor.name).order_by(col(SyncCursor.name))))
    for name in names:
        with transaction(url) as session:
            session.get(SyncCursor, name, with_for_update=True)
    return len(names)
