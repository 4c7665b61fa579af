"""Column types shared by every table."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import DateTime
from sqlalchemy.types import TypeDecorator

# Deadlines and retention periods are calendar days where the controller is.
BERLIN = ZoneInfo("Europe/Berlin")


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC in Python, on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no zone, so values are stored as naive UTC
    and made aware again on the way out. A naive value on the way in is a bug, not a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: store timezone-aware values only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def berlin_text(value: datetime | None) -> str:
    """A stored (UTC) time as the officer reads it: Berlin wall clock to the second, with
    the zone's abbreviation; "–" for none.

    >>> berlin_text(datetime(2026, 11, 20, 13, 30, 5, 123456, tzinfo=UTC))
    '2026-11-20 14:30:05 CET'
    """
    return value.astimezone(BERLIN).strftime("%Y-%m-%d %H:%M:%S %Z") if value is not None else "–"


def new_id() -> uuid.UUID:
    return uuid.uuid4()
