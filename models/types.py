"""Column types shared by every table."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import Column, DateTime, Table
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


# TIMIFY books on a 5-minute grid (``startDate`` minutes divisible by 5).
GRID_MINUTES = 5


def berlin_wall_clock(start: datetime, *, as_written: bool = False) -> datetime:
    """`start` as Berlin wall-clock time, if that is a bookable slot start; ValueError if not.

    TIMIFY takes a start as Berlin wall-clock text without an offset, so a start is only
    deliverable when it lies on the 5-minute grid and is not in the hour that happens twice
    when the clocks go back (the text could name either instant). The booking intake and
    ``connectors.timify.berlin_start`` both check with this function, so intake never
    accepts a start that the push would refuse. With ``as_written`` (intake: the text the
    website sent) the offset given must also be Berlin's at that instant; otherwise a
    wall-clock time that does not exist in Berlin (the hour the clocks skip) or a time meant
    elsewhere would be booked an hour or more off. Reasons never quote the value.

    >>> berlin_wall_clock(datetime(2026, 12, 3, 9, 30, tzinfo=UTC)).isoformat()
    '2026-12-03T10:30:00+01:00'
    >>> berlin_wall_clock(datetime.fromisoformat("2027-03-28T02:30:00+01:00"), as_written=True)
    Traceback (most recent call last):
    ...
    ValueError: does not exist in Berlin: the clocks skip from 02:00 to 03:00 that night
    >>> berlin_wall_clock(datetime(2026, 10, 25, 0, 30, tzinfo=UTC))
    Traceback (most recent call last):
    ...
    ValueError: is ambiguous in Berlin: the clocks go back that night and the hour from 02:00 happens twice
    """
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError("must carry a UTC offset")
    local = start.astimezone(BERLIN)
    if as_written and start.utcoffset() != local.utcoffset():
        wall = start.replace(tzinfo=None)
        # A wall-clock time in the skipped hour comes back from a round trip through UTC
        # an hour later; one that exists comes back as it was.
        round_trip = wall.replace(tzinfo=BERLIN).astimezone(UTC).astimezone(BERLIN)
        if round_trip.replace(tzinfo=None) != wall:
            raise ValueError("does not exist in Berlin: the clocks skip from 02:00 to 03:00 that night")
        raise ValueError("must carry Berlin's UTC offset for that date (+01:00 in winter, +02:00 in summer)")
    if local.minute % GRID_MINUTES or local.second or local.microsecond:
        raise ValueError("must lie on the 5-minute grid")
    if local.replace(fold=1 - local.fold).utcoffset() != local.utcoffset():
        raise ValueError("is ambiguous in Berlin: the clocks go back that night and the hour from 02:00 happens twice")
    return local


def new_id() -> uuid.UUID:
    return uuid.uuid4()


# What a column can hold, declared once per column of every table (``classify``): erasure
# clears the personal ones and ``personal_data_left`` reads them back; a test fails for a
# column without a class.
PERSONAL = "personal"  # names, describes or reaches the person: names, contact data, IBAN, IPs, documents
PSEUDONYMOUS = "pseudonymous"  # points at a person without naming them: our ids, pseudonyms, processors' ids
NOT_PERSONAL = "not_personal"  # states, times, counts, checked free texts
PII_CLASSES = (PERSONAL, PSEUDONYMOUS, NOT_PERSONAL)


def classify(
    model: type,
    *,
    personal: Iterable[str] = (),
    pseudonymous: Iterable[str] = (),
    not_personal: Iterable[str] = (),
) -> None:
    """Declare the class of each named column of `model`'s table (``column.info["pii"]``).

    Called right below the model. A name that is no column, or named twice, is a
    ValueError at import; a column left out has no class (tests/models/test_pii_classes.py
    fails for it).

    Example::

        classify(DataSubject, personal=["email", "first_name"], pseudonymous=["id", "pseudonym"],
                 not_personal=["created_at"])
    """
    table: Table = model.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
    seen: set[str] = set()
    for kind, names in ((PERSONAL, personal), (PSEUDONYMOUS, pseudonymous), (NOT_PERSONAL, not_personal)):
        for name in names:
            if name not in table.c:
                raise ValueError(f"{table.name} has no column {name}")
            if name in seen:
                raise ValueError(f"{table.name}.{name} is classified twice")
            seen.add(name)
            table.c[name].info["pii"] = kind


def pii_class(column: Column) -> str | None:
    """The column's declared class (``PII_CLASSES``), None when undeclared."""
    return column.info.get("pii")


def personal_columns(table: Table) -> list[Column]:
    """The table's columns declared personal."""
    return [c for c in table.columns if pii_class(c) == PERSONAL]
