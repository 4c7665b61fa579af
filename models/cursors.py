"""Sync cursors and the change counter they compare against."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlmodel import Field, Session, SQLModel

from models.types import UTCDateTime, utcnow


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


def next_seq(session: Session, name: str, count: int = 1) -> int:
    """Reserve `count` numbers of counter `name`; returns the first.

    The UPDATE holds the row lock until commit, so on PostgreSQL a reader never sees number
    n+1 committed before n; on SQLite the whole write transaction is serialised anyway.
    """
    if session.get(Counter, name) is None:
        session.add(Counter(name=name, value=0))
        session.flush()
    result = session.execute(
        update(Counter)
        .where(Counter.name == name)
        .values(value=Counter.value + count)
        .returning(Counter.value)
    )
    return result.scalar_one() - count + 1


def get_cursor(session: Session, name: str) -> SyncCursor:
    cursor = session.get(SyncCursor, name)
    if cursor is None:
        cursor = SyncCursor(name=name)
        session.add(cursor)
    return cursor


def advance_cursor(session: Session, name: str, position: int) -> None:
    """Move the cursor forward (never back)."""
    cursor = get_cursor(session, name)
    if position > cursor.position:
        cursor.position = position
        cursor.updated_at = utcnow()
