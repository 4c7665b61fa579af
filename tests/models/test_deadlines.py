"""Art. 12(3) deadline arithmetic: month ends, leap years, Berlin days, extension rules."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from models.deadlines import add_months, check_extension, due_date, urgency


@pytest.mark.parametrize(
    ("received", "due"),
    [
        (datetime(2026, 1, 31, 10, tzinfo=UTC), date(2026, 2, 28)),
        (datetime(2028, 1, 31, 10, tzinfo=UTC), date(2028, 2, 29)),  # leap year
        (datetime(2026, 3, 31, 10, tzinfo=UTC), date(2026, 4, 30)),
        (datetime(2026, 12, 15, 10, tzinfo=UTC), date(2027, 1, 15)),  # year end
        (datetime(2026, 1, 30, 23, 30, tzinfo=UTC), date(2026, 2, 28)),  # 31 Jan 00:30 in Berlin
        (datetime(2026, 2, 28, 10, tzinfo=UTC), date(2026, 3, 28)),
    ],
)
def test_one_calendar_month_from_the_berlin_day_of_receipt(received, due):
    assert due_date(received) == due


def test_extension_counts_from_receipt_and_clamps():
    received = datetime(2026, 11, 30, 9, tzinfo=UTC)
    assert due_date(received, 2) == date(2027, 2, 28)
    assert add_months(date(2027, 11, 30), 3) == date(2028, 2, 29)


def test_extension_rules():
    received = datetime(2026, 1, 31, 9, tzinfo=UTC)
    assert check_extension(received, 0, 2, "many processors", date(2026, 2, 20), date(2026, 2, 20)) == 2
    assert check_extension(received, 1, 1, "still waiting", date(2026, 2, 28), date(2026, 2, 28)) == 2
    with pytest.raises(ValueError, match="needs a reason"):
        check_extension(received, 0, 1, " ", date(2026, 2, 1), date(2026, 2, 1))
    with pytest.raises(ValueError, match="at most 2 months"):
        check_extension(received, 1, 2, "x", date(2026, 2, 1), date(2026, 2, 1))
    with pytest.raises(ValueError, match="within the first month"):
        check_extension(received, 0, 1, "x", date(2026, 3, 1), date(2026, 3, 1))
    with pytest.raises(ValueError, match="before the request"):
        check_extension(received, 0, 1, "x", date(2026, 1, 30), date(2026, 2, 1))
    with pytest.raises(ValueError, match="in the future"):  # within the month, but not yet
        check_extension(received, 0, 1, "x", date(2026, 2, 10), date(2026, 2, 5))


def test_urgency_boundaries():
    due = date(2026, 2, 28)
    assert urgency(due, date(2026, 2, 22)) == "on_time"
    assert urgency(due, date(2026, 2, 23)) == "due_soon"
    assert urgency(due, date(2026, 2, 28)) == "due_soon"
    assert urgency(due, date(2026, 3, 1)) == "overdue"


def test_naive_receipt_is_refused():
    with pytest.raises(ValueError, match="timezone"):
        due_date(datetime(2026, 1, 1))
