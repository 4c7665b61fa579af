"""The controller's calendar: Berlin time, the day it is there, TIMIFY's booking grid.

At the bottom of the project (``core``): connectors, models and flows all read it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

# Deadlines and retention periods are calendar days where the controller is.
BERLIN = ZoneInfo("Europe/Berlin")


def utcnow() -> datetime:
    return datetime.now(UTC)


def berlin_today(now: datetime) -> date:
    """The calendar day it is in Berlin at `now` (deadlines and purge dates count in it)."""
    return now.astimezone(BERLIN).date()


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
