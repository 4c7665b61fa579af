"""Art. 12(3) GDPR deadlines in calendar terms (Europe/Berlin).

An erasure request is answered "within one month of receipt": the same day number one month
later, or the month's last day when it has none (31 January → 28 or 29 February). It may be
extended "by two further months where necessary", only with a reason, and only if the subject
is told within the first month.
"""

from __future__ import annotations

import calendar
from datetime import date, datetime
from typing import Protocol

from models.types import BERLIN

MAX_EXTENSION_MONTHS = 2
WARN_DAYS = 5


def add_months(day: date, months: int) -> date:
    """The same day `months` later, clamped to the end of a shorter month.

    >>> add_months(date(2026, 1, 31), 1)
    datetime.date(2026, 2, 28)
    >>> add_months(date(2028, 1, 31), 1)
    datetime.date(2028, 2, 29)
    """
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def received_day(received_at: datetime) -> date:
    """The Berlin calendar day a request arrived (a letter at 23:30 UTC is the next day)."""
    if received_at.tzinfo is None:
        raise ValueError("received_at needs a timezone")
    return received_at.astimezone(BERLIN).date()


def due_date(received_at: datetime, extension_months: int = 0) -> date:
    """The last day to answer; after an extension, counted from receipt as well."""
    if not 0 <= extension_months <= MAX_EXTENSION_MONTHS:
        raise ValueError(f"an extension is 1 or {MAX_EXTENSION_MONTHS} months")
    return add_months(received_day(received_at), 1 + extension_months)


def check_extension(
    received_at: datetime, current_months: int, months: int, reason: str, informed_on: date, today: date
) -> int:
    """The new total extension in months, or ValueError saying which rule is broken."""
    if not reason.strip():
        raise ValueError("an extension needs a reason")
    total = current_months + months
    if months < 1 or total > MAX_EXTENSION_MONTHS:
        raise ValueError(f"extensions add up to at most {MAX_EXTENSION_MONTHS} months")
    first_month_ends = due_date(received_at)
    if informed_on > first_month_ends or today > first_month_ends:
        # Art. 12(3): the subject must learn of the extension within one month of receipt.
        raise ValueError("too late: the subject must be informed within the first month")
    if informed_on < received_day(received_at):
        raise ValueError("informed before the request was received")
    if informed_on > today:  # a day to come is a promise, not a record that they were told
        raise ValueError("informed_on lies in the future")
    return total


def urgency(due: date, today: date) -> str:
    """'overdue', 'due_soon' (within 5 days) or 'on_time'."""
    if today > due:
        return "overdue"
    if (due - today).days <= WARN_DAYS:
        return "due_soon"
    return "on_time"


class Deadlined(Protocol):
    """A request with an Art. 12(3) deadline (an erasure request, a rights request)."""

    received_at: datetime
    extension_months: int
    extension_reason: str | None
    subject_informed_on: date | None
    due: date
    urgency: str


def apply_extension(request: Deadlined, months: int, reason: str, informed_on: date, today: date) -> None:
    """Extend `request`'s deadline by `months` (``check_extension``'s rules; ValueError
    naming the one broken): the new total, the reason, the day the subject was told, the
    new due date and urgency. `reason` must already be checked to hold no personal data."""
    total = check_extension(request.received_at, request.extension_months, months, reason, informed_on, today)
    request.extension_months = total
    request.extension_reason = reason
    request.subject_informed_on = informed_on
    request.due = due_date(request.received_at, total)
    request.urgency = urgency(request.due, today)
