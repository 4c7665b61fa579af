"""Intake of bookings (seed 001): validation at the edge, idempotent storing, state changes."""

from __future__ import annotations

import doctest
import json
from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import example, given
from hypothesis import settings as settings_
from hypothesis import strategies as st
from sqlalchemy import text
from sqlmodel import select

import core.clock
import models.types
from connectors.timify import berlin_start
from flows.intake import intake_lines
from intake.lines import parse_line
from models.audit import AuditEntry
from models.bookings import Booking, BookingStatus
from models.db import transaction
from psync.sandbox_env import SERVICE_POINTS

NOW = datetime(2026, 3, 20, 9, 0, tzinfo=UTC)
KVNR = "A123456780"


def request(booking_id="B-1", **kw) -> dict:
    event = {
        "type": "booking.request",
        "booking_id": booking_id,
        "channel": "branch",
        "service_point": "sp-berlin",
        "start": "2026-03-30T10:00:00+02:00",
        "duration_minutes": 30,
        "salutation": "Frau",
        "first_name": "Erika",
        "last_name": "Mustermann",
        "phone": "030 901820",
        "email": "erika@example.de",
        "insurance_number": KVNR,
        "at": (NOW - timedelta(minutes=5)).isoformat(),
    }
    event.update(kw)
    return {k: v for k, v in event.items() if v is not None}


def reschedule(booking_id="B-1", start="2026-03-31T11:15:00+02:00", **kw) -> dict:
    return {"type": "booking.reschedule", "booking_id": booking_id, "start": start, "at": NOW.isoformat(), **kw}


def cancel(booking_id="B-1") -> dict:
    return {"type": "booking.cancel", "booking_id": booking_id, "at": NOW.isoformat()}


def run(settings, *events, now: datetime = NOW) -> list:
    lines = [e if isinstance(e, str) else json.dumps(e) for e in events]
    with transaction() as session:
        return intake_lines(session, settings.hmac_key(), lines, now=now, service_points=SERVICE_POINTS)


def outcomes(results) -> list[str]:
    return [r.outcome for r in results]


def bookings() -> list[Booking]:
    with transaction() as session:
        rows = list(session.exec(select(Booking).order_by(Booking.seq)))
        session.expunge_all()
        return rows


def row_counts() -> dict[str, int]:
    with transaction() as session:
        return {
            t: session.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("booking", "data_subject", "intake_receipt")
        }


def test_a_branch_booking_is_stored_in_utc_with_only_what_was_given(settings):
    assert outcomes(run(settings, request())) == ["stored"]
    [booking] = bookings()
    assert booking.start_at == datetime(2026, 3, 30, 8, 0, tzinfo=UTC)  # CEST, +02:00
    assert booking.insurance_number == KVNR and booking.birth_date is None
    assert booking.phone == "+4930901820"  # E.164
    assert booking.concern is None and booking.status == BookingStatus.active


def test_birth_date_alone_is_enough(settings):
    results = run(
        settings,
        request(
            insurance_number=None, birth_date="1990-04-01", channel="video", service_point=None, concern="Zahnersatz"
        ),
    )
    assert outcomes(results) == ["stored"]
    [booking] = bookings()
    assert booking.birth_date == date(1990, 4, 1) and booking.insurance_number is None
    assert booking.channel == "video" and booking.concern == "Zahnersatz"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"insurance_number": None}, "give insurance_number or birth_date"),
        ({"start": "2026-03-30T10:03:00+02:00"}, "start: Value error, must lie on the 5-minute grid"),
        ({"start": "2026-03-20T09:55:00+01:00"}, "start: Value error, lies in the past"),
        ({"start": "2026-03-30T10:00:00"}, "start: Input should have timezone info"),
        ({"service_point": "sp-atlantis"}, "service_point: Value error, unknown service point"),
        ({"service_point": None}, "service_point is needed for branch bookings"),
        ({"channel": "video"}, "service_point is needed for branch bookings and only for them"),
        ({"phone": "12345"}, "phone: Value error, not a valid phone number"),
        ({"insurance_number": "A123456781"}, "insurance_number: Value error, not a valid health-insurance"),
        ({"birth_date": "2027-01-01", "insurance_number": None}, "birth_date: Value error, is not a plausible"),
        ({"duration_minutes": 32}, "duration_minutes: Input should be a multiple of 5"),
        ({"booking_id": "B 1; DROP TABLE"}, "booking_id: String should match pattern"),
        ({"iban": "DE89370400440532013000"}, "iban: Extra inputs are not permitted"),
    ],
)
def test_a_bad_request_is_rejected_with_a_reason_and_changes_nothing(settings, change, reason):
    results = run(settings, request(**change))
    assert outcomes(results) == ["rejected"]
    assert reason.replace("Value error, ", "") in results[0].reason
    assert row_counts() == {"booking": 0, "data_subject": 0, "intake_receipt": 0}


def test_rejection_reasons_never_quote_the_input(settings):
    [result] = run(settings, request(phone="erika-secret-phone", email="not-an-email"))
    assert "erika" not in result.reason and "not-an-email" not in result.reason


def test_dst_change_is_a_different_utc_offset_for_the_same_wall_clock(settings):
    # 10:00 in Berlin is 09:00Z before the switch on 29 March 2026 and 08:00Z after it.
    run(settings, request("B-1", start="2026-03-28T10:00:00+01:00"), request("B-2", start="2026-03-29T10:00:00+02:00"))
    assert [b.start_at.hour for b in bookings()] == [9, 8]


def test_reschedule_and_cancel_change_state_and_take_a_new_sequence_number(settings):
    run(settings, request())
    first_seq = bookings()[0].seq
    assert outcomes(run(settings, reschedule(duration_minutes=45))) == ["stored"]
    [booking] = bookings()
    assert booking.start_at == datetime(2026, 3, 31, 9, 15, tzinfo=UTC)
    assert booking.duration_min == 45 and booking.seq > first_seq
    assert outcomes(run(settings, cancel())) == ["stored"]
    assert bookings()[0].status == BookingStatus.cancelled
    assert outcomes(run(settings, cancel("B-1"))) == ["duplicate"]


def test_the_same_file_twice_changes_nothing_the_second_time(settings):
    lines = [request(), reschedule(), reschedule(start="2026-04-01T09:00:00+02:00")]
    assert outcomes(run(settings, *lines)) == ["stored", "stored", "stored"]
    before = bookings()[0]
    assert outcomes(run(settings, *lines)) == ["duplicate", "duplicate", "duplicate"]
    after = bookings()[0]
    assert (after.start_at, after.seq) == (before.start_at, before.seq)


def test_a_reschedule_and_cancellation_before_their_booking_in_an_earlier_request_are_kept_and_applied(settings):
    # Each line a request of its own, the booking last: nothing is lost, and the booking
    # ends as if they had come in order (by event time: moved, then cancelled).
    moved = reschedule("B-9", at=(NOW - timedelta(minutes=2)).isoformat())
    assert [(r.outcome, r.reason) for r in run(settings, moved)] == [
        ("pending", "unknown booking_id: kept, and applied when it arrives")
    ]
    assert outcomes(run(settings, cancel("B-9"))) == ["pending"]
    assert outcomes(run(settings, cancel("B-9"))) == ["pending"]  # sent again: kept once
    with transaction() as session:
        assert session.execute(text("SELECT count(*) FROM intake_pending")).scalar_one() == 2
    assert outcomes(run(settings, request("B-9"))) == ["stored"]
    [booking] = bookings()
    assert booking.status == BookingStatus.cancelled
    assert booking.start_at == datetime.fromisoformat(moved["start"])
    with transaction() as session:
        assert session.execute(text("SELECT count(*) FROM intake_pending")).scalar_one() == 0
        applied = session.exec(select(AuditEntry).where(AuditEntry.action == "intake.pending")).all()
        assert sorted(e.outcome for e in applied) == ["applied", "applied", "kept", "kept", "kept"]
    # Applied now: sent again, they are duplicates.
    assert outcomes(run(settings, moved, cancel("B-9"))) == ["duplicate", "duplicate"]


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        ([request(), request(first_name="Other")], "booking_id exists already"),
        (
            [request(channel="video", service_point=None), reschedule(service_point="sp-berlin")],
            "service_point only applies to branch bookings",
        ),
    ],
)
def test_events_that_do_not_fit_the_booking_are_rejected(settings, events, reason):
    results = run(settings, *events)
    assert results[-1].outcome == "rejected" and reason in results[-1].reason


def test_one_subject_per_person_across_bookings_and_an_audit_row_per_decision(settings):
    run(settings, request("B-1"), request("B-2", email="ERIKA@example.de"), cancel("B-2"))
    assert row_counts()["data_subject"] == 1
    with transaction() as session:
        actions = [e.action for e in session.exec(select(AuditEntry).order_by(AuditEntry.id))]
    assert actions == ["booking.requested", "booking.requested", "booking.cancelled"]


# times at the edge (issue 14): never take in a start the push to TIMIFY refuses ------------
SPRING_FORWARD = ["2027-03-28T02:30:00+01:00", "2027-03-28T02:30:00+02:00"]  # 02:00-03:00 skipped
AUTUMN_TWICE = ["2026-10-25T02:30:00+02:00", "2026-10-25T02:30:00+01:00"]  # both 02:30s
ORDINARY = {  # the minutes around both switches that exist once, as the website writes them
    "2026-10-25T01:55:00+02:00": datetime(2026, 10, 24, 23, 55, tzinfo=UTC),
    "2026-10-25T03:00:00+01:00": datetime(2026, 10, 25, 2, 0, tzinfo=UTC),
    "2027-03-28T01:55:00+01:00": datetime(2027, 3, 28, 0, 55, tzinfo=UTC),
    "2027-03-28T03:00:00+02:00": datetime(2027, 3, 28, 1, 0, tzinfo=UTC),
    "2026-12-03T10:30:00+01:00": datetime(2026, 12, 3, 9, 30, tzinfo=UTC),
}


def by_line(results) -> dict[int, tuple[str, str]]:
    return {r.line: (r.outcome, r.reason) for r in results}


@pytest.mark.parametrize("start", SPRING_FORWARD)
def test_a_start_in_the_hour_the_clocks_skip_is_refused_not_booked_an_hour_off(settings, start):
    results = by_line(run(settings, request("B-0"), request("B-1", start=start)))
    assert results[1] == ("stored", "")
    assert results[2] == ("rejected", "start: does not exist in Berlin: the clocks skip from 02:00 to 03:00 that night")
    assert [b.booking_ref for b in bookings()] == ["B-0"]


@pytest.mark.parametrize("start", AUTUMN_TWICE)
def test_a_start_in_the_hour_that_happens_twice_is_refused_at_both_instants(settings, start):
    [result] = run(settings, request(start=start))
    assert (result.line, result.outcome) == (1, "rejected")
    assert result.reason.startswith("start: is ambiguous in Berlin: the clocks go back that night")
    assert row_counts()["booking"] == 0


@pytest.mark.parametrize(
    ("start", "why"),
    [
        ("2026-12-03T09:30:00Z", "must carry Berlin's UTC offset"),  # the same instant as 10:30+01:00
        ("2026-07-01T10:00:00+01:00", "must carry Berlin's UTC offset"),  # winter offset in summer
        ("2026-12-03T10:30:00+05:45", "must carry Berlin's UTC offset"),
        ("2026-03-30T10:00:30+02:00", "must lie on the 5-minute grid"),  # seconds count too
    ],
)
def test_a_start_not_written_as_berlin_slot_time_is_refused(settings, start, why):
    [result] = run(settings, request(start=start))
    assert result.outcome == "rejected" and result.reason.startswith(f"start: {why}")
    assert start[:16] not in result.reason  # the reason never repeats the input


@pytest.mark.parametrize("start", list(ORDINARY))
def test_a_start_next_to_a_switch_that_exists_once_is_stored_at_its_instant(settings, start):
    assert outcomes(run(settings, request(start=start))) == ["stored"]
    assert bookings()[0].start_at == ORDINARY[start]
    assert berlin_start(bookings()[0].start_at) == start[:16].replace("T", " ")


@pytest.mark.parametrize("start", [*SPRING_FORWARD, *AUTUMN_TWICE])
def test_a_reschedule_into_a_switch_hour_is_refused_and_the_booking_stays(settings, start):
    run(settings, request())
    results = by_line(run(settings, reschedule(), reschedule(start=start)))
    assert results[1][0] == "stored"
    assert results[2][0] == "rejected" and results[2][1].startswith("start: ")
    assert bookings()[0].start_at == datetime(2026, 3, 31, 9, 15, tzinfo=UTC)  # the first reschedule


# An oracle that does not ask zoneinfo: the EU rule (Directive 2000/84/EC). Summer time runs
# from 01:00 UTC on the last Sunday of March to 01:00 UTC on the last Sunday of October.
def _last_sunday(year: int, month: int) -> date:
    last = date(year, month, 31)
    return last - timedelta(days=(last.weekday() + 1) % 7)


def _berlin_offset_hours(instant_utc: datetime) -> int:
    year = instant_utc.year
    spring = datetime.combine(_last_sunday(year, 3), time(1), tzinfo=UTC)
    autumn = datetime.combine(_last_sunday(year, 10), time(1), tzinfo=UTC)
    return 2 if spring <= instant_utc < autumn else 1


SWITCH_DAYS = [_last_sunday(y, m) for y in range(2026, 2030) for m in (3, 10)]


@settings_(max_examples=400, deadline=None)
@given(
    day=st.one_of(st.dates(date(2026, 4, 1), date(2029, 12, 31)), st.sampled_from(SWITCH_DAYS)),
    hour=st.one_of(st.integers(0, 23), st.sampled_from([1, 2, 3])),
    minute=st.one_of(st.sampled_from(range(0, 60, 5)), st.integers(0, 59)),
    offset=st.sampled_from([1, 2, 0]),
)
@example(day=date(2027, 3, 28), hour=2, minute=30, offset=1)
@example(day=date(2027, 3, 28), hour=2, minute=30, offset=2)
@example(day=date(2026, 10, 25), hour=2, minute=30, offset=2)
@example(day=date(2026, 10, 25), hour=2, minute=30, offset=1)
def test_intake_takes_a_start_exactly_when_timify_can_be_sent_that_wall_clock(day, hour, minute, offset):
    """Every start intake accepts goes to TIMIFY as the very wall-clock time the website
    wrote; every start it refuses is off the grid, not Berlin's offset, or in the repeated
    hour. Checked against the EU rule, over four years with every switch day."""
    wall = datetime.combine(day, time(hour, minute))
    text = f"{wall:%Y-%m-%dT%H:%M}:00+0{offset}:00"
    instant = (wall - timedelta(hours=offset)).replace(tzinfo=UTC)
    deliverable = (
        offset == _berlin_offset_hours(instant)
        and minute % 5 == 0
        and not (day.month == 10 and day in SWITCH_DAYS and hour == 2)
    )
    line = json.dumps(request(start=text))
    try:
        event = parse_line(line, {"now": NOW, "service_points": set(SERVICE_POINTS)})
    except ValueError as exc:
        assert not deliverable, str(exc)
        assert str(exc).startswith("start: ")
        return
    assert deliverable
    # The push reads the start back from the database, in UTC.
    assert berlin_start(event.start.astimezone(UTC)) == f"{wall:%Y-%m-%d %H:%M}"


def test_the_time_helper_examples_hold():
    assert doctest.testmod(core.clock).attempted > 0 and doctest.testmod(core.clock).failed == 0
    assert doctest.testmod(models.types).failed == 0


def test_a_file_imported_again_after_the_appointment_reports_its_lines_duplicate(settings):
    # Days later the start lies in the past; what was stored is still reported as stored
    # (a rejection would make `psync intake` exit 1 and say the line changed nothing new).
    lines = (request(), reschedule())
    assert outcomes(run(settings, *lines)) == ["stored", "stored"]
    later = NOW + timedelta(days=30)
    assert outcomes(run(settings, *lines, now=later)) == ["duplicate", "duplicate"]
    assert [b.start_at for b in bookings()] == [datetime(2026, 3, 31, 9, 15, tzinfo=UTC)]
    # A line not stored before is rejected for its past start, as ever.
    [result] = run(settings, request("B-2"), now=later)
    assert (result.outcome, result.reason) == ("rejected", "start: lies in the past")
