"""Event time, not arrival order (issue 14): consent, bookings and ISIC orders end in the
state of their latest event, whatever order the lines and files arrive in, and a file
imported twice changes nothing the second time.

The property tests draw a person's history (sign-up, confirm, withdraw, sign-up again, … at
increasing times; a booking's request, reschedules and maybe its cancellation; an order and
its cancellations), then import it in a drawn order three ways: one line per file (a line
rejected because its sign-up, booking or order was not there yet is imported again at the
end, as an operator does with a file that exited 1), all lines as one file, and that file a
second time. Each way must end where a plain state machine, fed the history in event-time
order, ends.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import func, text
from sqlmodel import select

from flows.intake import intake_lines
from intake.lines import LineResult
from models.audit import AuditEntry
from models.bookings import Booking, BookingStatus
from models.consent import ConsentEvent, ConsentRecord, ConsentState, changed_since
from models.consent_text import register
from models.db import transaction
from models.identity import pseudonym
from models.isic import IsicOrder, OrderStatus
from models.subjects import DataSubject
from psync.sandbox_env import SERVICE_POINTS

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
CET = timezone(timedelta(hours=1))  # Berlin's offset in December
START = NOW - timedelta(days=10)
DOC_KEY = Fernet.generate_key()
FRESH = itertools.count(1)  # a new person (address, booking id, order id) per example
SETTINGS = hypothesis_settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
RANK = {"signup": 0, "confirm": 1, "withdraw": 2}
# At the same instant only when the later kind ranks after the earlier one: then the listed
# order is the event-time order too.
GAPS = (timedelta(0), timedelta(seconds=1), timedelta(minutes=7), timedelta(days=1))


@pytest.fixture(autouse=True)
def policy_versions(settings):
    """The versions the drawn sign-ups name (2026-00 …), registered as intake requires
    (2026-01 is shipped with psync)."""
    with transaction() as session:
        for n in (0, *range(2, 10)):
            register(session, f"2026-{n:02d}", f"Einwilligung {n}", f"Bestätigungsmail {n}", date(2026, 1, 1))


def run(settings, events: list[dict], base_dir=None) -> list[LineResult]:
    with transaction() as session:
        return intake_lines(
            session,
            settings.hmac_key(),
            [json.dumps(e) for e in events],
            now=NOW,
            service_points=SERVICE_POINTS,
            base_dir=base_dir,
            document_key=DOC_KEY,
        )


def one_line_at_a_time(settings, events: list[dict], base_dir=None) -> None:
    """Each line a file of its own: none is rejected, whatever it names that is not there
    yet (a confirmation, reschedule or cancellation arriving before its sign-up, booking or
    order is kept as ``pending``)."""
    outcomes = [run(settings, [e], base_dir)[0] for e in events]
    assert "rejected" not in [r.outcome for r in outcomes], outcomes


def twice_as_one_file(settings, events: list[dict], snapshot, base_dir=None) -> None:
    """The whole history as one file, then the same file again: all duplicates, no change."""
    first = run(settings, events, base_dir)
    assert "rejected" not in [r.outcome for r in first], first
    before = snapshot()
    second = run(settings, events, base_dir)
    assert [r.outcome for r in second] == ["duplicate"] * len(events)
    assert snapshot() == before


def audit_rows() -> int:
    with transaction() as session:
        return session.execute(text("SELECT count(*) FROM audit_entry")).scalar_one()


# consent ------------------------------------------------------------------------------------
def consent_event(kind: str, email: str, at: datetime, n: int) -> dict:
    event = {"type": f"consent.{kind}", "list": "newsletter", "email": email, "at": at.isoformat()}
    if kind == "signup":
        event.update(
            ip=f"198.51.100.{n + 1}",
            source=f"https://example.de/nl/{n}",
            policy_version=f"2026-{n:02d}",
            salutation="Frau",
            first_name=f"Vorname{n}",
            last_name=f"Nachname{n}",
        )
    elif kind == "confirm":
        event["ip"] = f"203.0.113.{n + 1}"
    else:
        event["channel"] = ("email", "portal")[n % 2]
    return event


@st.composite
def consent_histories(draw) -> tuple[str, list[dict]]:
    """A person's consent history on one list, in event-time order, starting with a sign-up."""
    email = f"person{next(FRESH)}@example.de"
    kinds = ["signup", *draw(st.lists(st.sampled_from(list(RANK)), max_size=6))]
    at, events = START, []
    for n, kind in enumerate(kinds):
        if n:
            gap = draw(st.sampled_from(GAPS))
            at += gap if gap or RANK[kind] > RANK[kinds[n - 1]] else timedelta(seconds=1)
        events.append(consent_event(kind, email, at, n))
    return email, events


def plain_state_machine(events: list[dict]) -> tuple[dict, dict]:
    """The double-opt-in cycle of the README, fed in event-time order: (record, names)."""
    r: dict = dict.fromkeys(
        (
            "state",
            "signup_at",
            "signup_ip",
            "source",
            "policy_version",
            "confirm_at",
            "confirm_ip",
            "withdrawn_at",
            "withdraw_channel",
        )
    )
    names: dict = {}
    for e in events:
        at = datetime.fromisoformat(e["at"])
        if e["type"] == "consent.signup":
            names = {k: e[k] for k in ("salutation", "first_name", "last_name")}  # the newest given
            if r["state"] != "confirmed":
                r.update(
                    state="pending",
                    signup_at=at,
                    signup_ip=e["ip"],
                    source=e["source"],
                    policy_version=e["policy_version"],
                    confirm_at=None,
                    confirm_ip=None,
                    withdrawn_at=None,
                    withdraw_channel=None,
                )
        elif e["type"] == "consent.confirm":
            if r["state"] == "pending":
                r.update(state="confirmed", confirm_at=at, confirm_ip=e["ip"])
        elif r["state"] in ("pending", "confirmed"):
            r.update(state="withdrawn", withdrawn_at=at, withdraw_channel=e["channel"])
    return r, names


def consent_of(settings, email: str) -> tuple[dict, dict, DataSubject]:
    with transaction() as session:
        subject = session.exec(
            select(DataSubject).where(DataSubject.pseudonym == pseudonym(settings.hmac_key(), "email", email))
        ).one()
        record = session.exec(select(ConsentRecord).where(ConsentRecord.subject_id == subject.id)).one()
        session.expunge(subject)
    fields = {k: getattr(record, k) for k in plain_state_machine([])[0]}
    names = {k: getattr(subject, k) for k in ("salutation", "first_name", "last_name")}
    return fields, names, subject


def assert_consent_ends_as_its_history(settings, email: str, history: list[dict]) -> None:
    expected, names = plain_state_machine(history)
    fields, got_names, subject = consent_of(settings, email)
    assert fields == expected
    assert got_names == names and subject.email == email
    # the state of the latest event, in words
    last = history[-1]["type"]
    if last == "consent.withdraw":
        assert fields["state"] == "withdrawn"
    elif last == "consent.confirm":
        assert fields["state"] in ("confirmed", "withdrawn")  # confirmed unless it came too late


def consent_snapshot(settings, email: str):
    def snapshot():
        with transaction() as session:
            subject_id = session.exec(
                select(DataSubject.id).where(DataSubject.pseudonym == pseudonym(settings.hmac_key(), "email", email))
            ).one()
            record = session.exec(select(ConsentRecord).where(ConsentRecord.subject_id == subject_id)).one()
            events = session.exec(
                select(func.count()).select_from(ConsentEvent).where(ConsentEvent.consent_id == record.id)
            ).one()
            audit = session.execute(text("SELECT count(*) FROM audit_entry")).scalar_one()
            return record.model_dump(), events, audit

    return snapshot


@SETTINGS
@given(drawn=consent_histories(), data=st.data())
def test_consent_ends_in_the_state_of_its_latest_event_whatever_the_arrival_order(settings, drawn, data):
    email, history = drawn
    arrival = data.draw(st.permutations(history), label="arrival")
    one_line_at_a_time(settings, arrival)
    assert_consent_ends_as_its_history(settings, email, history)

    # The same history for another person, as one file in that order, then the file again.
    other = email.replace("person", "file")
    history = [{**e, "email": other} for e in history]
    arrival = [{**e, "email": other} for e in arrival]
    twice_as_one_file(settings, arrival, consent_snapshot(settings, other))
    assert_consent_ends_as_its_history(settings, other, history)


# bookings -----------------------------------------------------------------------------------
SLOTS = [datetime(2026, 12, d, h, 0, tzinfo=UTC) for d in (3, 4, 7) for h in (8, 9, 13)]  # 09:00 CET …


def berlin_text(start: datetime) -> str:
    return start.astimezone(CET).isoformat()


def booking_request(ref: str, at: datetime, start: datetime) -> dict:
    return {
        "type": "booking.request",
        "booking_id": ref,
        "channel": "branch",
        "service_point": "sp-berlin",
        "start": berlin_text(start),
        "duration_minutes": 30,
        "salutation": "Frau",
        "first_name": "Erika",
        "last_name": "Mustermann",
        "phone": "030 901820",
        "email": f"{ref.lower()}@example.de",
        "birth_date": "1980-05-17",
        "at": at.isoformat(),
    }


@st.composite
def booking_histories(draw) -> list[dict]:
    """A request, reschedules (each with its start and duration), maybe a cancellation."""
    ref = f"EO-{next(FRESH)}"
    at = START
    events = [booking_request(ref, at, draw(st.sampled_from(SLOTS)))]
    for _ in range(draw(st.integers(0, 4))):
        at += draw(st.sampled_from(GAPS[1:]))
        events.append(
            {
                "type": "booking.reschedule",
                "booking_id": ref,
                "at": at.isoformat(),
                "start": berlin_text(draw(st.sampled_from(SLOTS))),
                "duration_minutes": draw(st.sampled_from([30, 45, 60])),
            }
        )
    if draw(st.booleans()):
        at += draw(st.sampled_from(GAPS[1:]))
        events.append({"type": "booking.cancel", "booking_id": ref, "at": at.isoformat()})
    return events


def booking_of(ref: str) -> Booking:
    with transaction() as session:
        booking = session.exec(select(Booking).where(Booking.booking_ref == ref)).one()
        session.expunge(booking)
        return booking


def assert_booking_ends_as_its_history(history: list[dict]) -> None:
    """Cancelled or not as its history says, and (cancelled too: the TIMIFY retention rule
    counts from it) at the start of its latest request or reschedule by event time."""
    booking = booking_of(history[0]["booking_id"])
    cancels = [e for e in history if e["type"] == "booking.cancel"]
    if cancels:
        assert booking.status == BookingStatus.cancelled
        assert booking.cancelled_at == datetime.fromisoformat(cancels[0]["at"])
    else:
        assert (booking.status, booking.cancelled_at) == (BookingStatus.active, None)
    latest = [e for e in history if e["type"] != "booking.cancel"][-1]
    assert booking.start_at == datetime.fromisoformat(latest["start"])
    assert booking.duration_min == latest["duration_minutes"]
    assert booking.updated_at == datetime.fromisoformat(latest["at"])


def booking_snapshot(ref: str):
    def snapshot():
        return booking_of(ref).model_dump(), audit_rows()

    return snapshot


@SETTINGS
@given(history=booking_histories(), data=st.data())
def test_a_booking_ends_in_the_state_of_its_latest_event_whatever_the_arrival_order(settings, history, data):
    arrival = data.draw(st.permutations(history), label="arrival")
    one_line_at_a_time(settings, arrival)
    assert_booking_ends_as_its_history(history)

    ref = history[0]["booking_id"]
    other = f"{ref}-file"

    def renamed(events):
        return [{**e, "booking_id": other} for e in events]

    twice_as_one_file(settings, renamed(arrival), booking_snapshot(other))
    assert_booking_ends_as_its_history(renamed(history))


# ISIC orders -------------------------------------------------------------------------------
def isic_order(ref: str, at: datetime) -> dict:
    return {
        "type": "isic.order",
        "order_id": ref,
        "first_name": "Lena",
        "last_name": "Studentin",
        "birth_date": "2004-02-29",
        "email": f"{ref.lower()}@example.de",
        "postal_code": "10115",
        "iban": "DE89 3704 0044 0532 0130 00",
        "institution": "TU Berlin",
        "at": at.isoformat(),
        "documents": {"student_proof": "nachweis.pdf", "id_copy": "ausweis.png", "photo": "foto.jpg"},
    }


@st.composite
def order_histories(draw) -> list[dict]:
    ref = f"EO-{next(FRESH)}"
    at = START
    events = [isic_order(ref, at)]
    for _ in range(draw(st.integers(0, 2))):
        at += draw(st.sampled_from(GAPS[1:]))
        events.append({"type": "isic.cancel", "order_id": ref, "at": at.isoformat()})
    return events


def order_of(ref: str) -> IsicOrder:
    with transaction() as session:
        order = session.exec(select(IsicOrder).where(IsicOrder.order_ref == ref)).one()
        session.expunge(order)
        return order


def assert_order_ends_as_its_history(history: list[dict]) -> None:
    order = order_of(history[0]["order_id"])
    cancels = [datetime.fromisoformat(e["at"]) for e in history if e["type"] == "isic.cancel"]
    if cancels:
        assert order.status == OrderStatus.cancelled
    else:
        assert order.status == OrderStatus.received and order.cancelled_at is None


@SETTINGS
@given(history=order_histories(), data=st.data())
def test_an_order_ends_in_the_state_of_its_latest_event_whatever_the_arrival_order(settings, docs, history, data):
    arrival = data.draw(st.permutations(history), label="arrival")
    one_line_at_a_time(settings, arrival, docs)
    assert_order_ends_as_its_history(history)

    other = f"{history[0]['order_id']}-file"

    def renamed(events):
        return [{**e, "order_id": other} for e in events]

    twice_as_one_file(settings, renamed(arrival), lambda: (order_of(other).model_dump(), audit_rows()), docs)
    assert_order_ends_as_its_history(renamed(history))


# named examples -------------------------------------------------------------------------------
ERIKA = "erika@example.de"
T1, T2, T3 = START, START + timedelta(minutes=5), START + timedelta(days=1)


def erika(kind: str, at: datetime, n: int = 0) -> dict:
    return consent_event(kind, ERIKA, at, n)


def record_of(settings) -> ConsentRecord:
    with transaction() as session:
        record = session.exec(select(ConsentRecord)).one()
        session.expunge(record)
        return record


def test_two_sign_ups_at_the_same_instant_end_the_same_in_either_order_names_with_their_proof(settings):
    # Which one counts is a tie the replay breaks by the lines' keys, not by arrival: the
    # names follow the sign-up whose proof the record keeps, and a line that changes
    # neither is reported unchanged and changes nothing.
    for i in range(8):
        email = f"tie{i}@example.de"
        pair = [consent_event("signup", email, START, n) for n in (0, 1)]
        first, second = pair if i % 2 else pair[::-1]
        run(settings, [first])
        [result] = run(settings, [second])
        with transaction() as session:
            subject = session.exec(select(DataSubject).where(DataSubject.email == email)).one()
            record = session.exec(select(ConsentRecord).where(ConsentRecord.subject_id == subject.id)).one()
            [kept] = [e for e in pair if e["ip"] == record.signup_ip]
            assert (subject.first_name, record.source) == (kept["first_name"], kept["source"]), i
            assert result.outcome == ("stored" if kept is second else "unchanged"), i
            if kept is first:
                assert result.reason.startswith("the same instant as the current decision (pending at "), i


def pushed(settings) -> list:
    """What the newsletter sync would push as active receivers."""
    with transaction() as session:
        return [r for r in changed_since(session, "newsletter", 0, 100) if r.state == ConsentState.confirmed]


@pytest.mark.parametrize("fraction", [0, 400_000, 999_499, 999_500, 999_999])
def test_the_pushed_times_are_the_whole_seconds_of_the_event_times(settings, fraction):
    # CleverReach takes Unix seconds: truncated, as int(timestamp()) is. SQLite rounds a
    # time to the millisecond first, which made 12:00:00.9995 the next second.
    signup_at = START.replace(microsecond=fraction)
    confirm_at = T2.replace(microsecond=fraction)
    run(settings, [erika("signup", signup_at), erika("confirm", confirm_at)])
    (row,) = pushed(settings)
    assert (int(row.registered), int(row.activated)) == (int(signup_at.timestamp()), int(confirm_at.timestamp()))


@pytest.mark.parametrize(
    "order", [("withdraw", "signup", "confirm"), ("signup", "withdraw", "confirm"), ("confirm", "withdraw", "signup")]
)
def test_a_withdrawal_above_the_signup_and_confirmation_in_the_file_wins(settings, order):
    lines = {"signup": erika("signup", T1), "confirm": erika("confirm", T2), "withdraw": erika("withdraw", T3)}
    results = run(settings, [lines[k] for k in order])
    assert "rejected" not in [r.outcome for r in results]
    assert record_of(settings).state == ConsentState.withdrawn
    assert pushed(settings) == []


def test_a_withdrawal_in_an_earlier_file_wins_over_an_earlier_signup_arriving_later(settings):
    assert [r.outcome for r in run(settings, [erika("withdraw", T3)])] == ["unchanged"]
    assert [r.outcome for r in run(settings, [erika("signup", T1), erika("confirm", T2)])] == ["stored", "stored"]
    record = record_of(settings)
    assert (record.state, record.withdrawn_at, record.signup_at) == (ConsentState.withdrawn, T3, T1)
    assert pushed(settings) == []


def test_a_late_signup_dated_before_the_withdrawal_does_not_confirm_again(settings):
    run(settings, [erika("signup", T1), erika("confirm", T2)])
    run(settings, [erika("withdraw", T3)])
    late = [erika("signup", T3 - timedelta(hours=1), 5), erika("confirm", T3 - timedelta(minutes=50), 6)]
    results = run(settings, late)
    reason = "older than the current decision (withdrawn at 2026-11-11T12:00:00Z)"
    assert [(r.outcome, r.reason) for r in results] == [("unchanged", reason), ("unchanged", reason)]
    record = record_of(settings)
    assert (record.state, record.signup_ip, record.confirm_ip) == ("withdrawn", "198.51.100.1", "203.0.113.1")
    # recorded all the same, and audited without personal data
    with transaction() as session:
        assert session.execute(text("SELECT count(*) FROM consent_event")).scalar_one() == 5
        ignored = [(a.outcome, a.detail) for a in session.exec(select(AuditEntry)) if a.action == "intake.ignored"]
    assert ignored == [
        ("stale", f"consent.signup list=newsletter: {reason}"),
        ("stale", f"consent.confirm list=newsletter: {reason}"),
    ]


def test_reimporting_a_file_with_an_out_of_order_withdrawal_changes_nothing(settings):
    lines = [erika("withdraw", T3), erika("signup", T1), erika("confirm", T2)]
    run(settings, lines)
    before = consent_snapshot(settings, ERIKA)()
    assert [r.outcome for r in run(settings, lines)] == ["duplicate"] * 3
    assert consent_snapshot(settings, ERIKA)() == before
    assert record_of(settings).state == ConsentState.withdrawn


def test_a_signup_a_second_after_a_withdrawal_needs_a_new_confirmation(settings):
    run(settings, [erika("signup", T1), erika("confirm", T2), erika("withdraw", T3)])
    [result] = run(settings, [erika("signup", T3 + timedelta(seconds=1), 3)])
    assert result.outcome == "stored"
    record = record_of(settings)
    assert (record.state, record.signup_ip, record.confirm_at) == (ConsentState.pending, "198.51.100.4", None)
    # the old confirmation, arriving again in another shape (another IP), confirms nothing
    [result] = run(settings, [erika("confirm", T2, 9)])
    assert result.outcome == "unchanged" and result.reason.startswith("older than the current decision (pending")
    assert record_of(settings).state == ConsentState.pending


def test_a_confirmation_after_a_withdrawal_does_not_revive_its_signup(settings):
    run(settings, [erika("signup", T1), erika("withdraw", T2)])
    [result] = run(settings, [erika("confirm", T3)])
    assert (result.outcome, result.reason) == (
        "unchanged",
        "the sign-up is withdrawn at 2026-11-10T12:05:00Z; a new sign-up is needed",
    )
    assert record_of(settings).state == ConsentState.withdrawn
    assert pushed(settings) == []


def test_a_confirmation_whose_signup_comes_in_a_later_file_is_kept_and_applied_when_it_arrives(settings):
    [result] = run(settings, [erika("confirm", T2)])
    assert (result.outcome, result.reason) == (
        "pending",
        "no sign-up for this list yet: kept, and applied when it arrives",
    )
    assert [r.outcome for r in run(settings, [erika("confirm", T2)])] == ["duplicate"]
    record = record_of(settings)
    assert (record.state, record.signup_at, record.confirm_ip) == (ConsentState.awaiting_signup, T2, None)
    assert pushed(settings) == []
    with transaction() as session:
        subject = session.exec(select(DataSubject)).one()
        assert (subject.email, subject.first_name) == (None, None)  # the address's pseudonym only
    assert [r.outcome for r in run(settings, [erika("signup", T1)])] == ["stored"]
    record = record_of(settings)
    assert (record.state, record.signup_at, record.confirm_at) == (ConsentState.confirmed, T1, T2)
    assert [(r.email, r.confirm_ip) for r in pushed(settings)] == [(ERIKA, "203.0.113.1")]


def test_a_late_signup_between_signup_and_confirmation_becomes_the_proof(settings):
    # The second sign-up (a new mail) is what the click confirmed: its proof is pushed.
    run(settings, [erika("signup", T1), erika("confirm", T2 + timedelta(minutes=5), 2)])
    assert record_of(settings).signup_ip == "198.51.100.1"
    [result] = run(settings, [erika("signup", T2, 1)])
    assert result.outcome == "stored"
    record = record_of(settings)
    assert (record.state, record.signup_at, record.signup_ip) == (ConsentState.confirmed, T2, "198.51.100.2")
    assert [r.signup_ip for r in pushed(settings)] == ["198.51.100.2"]


def booking_lines(ref: str = "B-EO") -> dict:
    return {
        "request": booking_request(ref, T1, SLOTS[0]),
        "early": {
            "type": "booking.reschedule",
            "booking_id": ref,
            "at": T2.isoformat(),
            "start": berlin_text(SLOTS[1]),
        },
        "cancel": {"type": "booking.cancel", "booking_id": ref, "at": (T2 + timedelta(hours=1)).isoformat()},
        "late": {"type": "booking.reschedule", "booking_id": ref, "at": T3.isoformat(), "start": berlin_text(SLOTS[2])},
    }


def test_a_reschedule_arriving_after_its_cancellation_sets_the_start_as_if_it_came_first(settings):
    lines = booking_lines()
    run(settings, [lines["request"], lines["cancel"]])
    seq = booking_of("B-EO").seq
    [result] = run(settings, [lines["early"]])  # dated before the cancellation
    assert (result.outcome, result.reason) == ("stored", "the booking stays cancelled (at 2026-11-10T13:05:00Z)")
    booking = booking_of("B-EO")
    # As with the lines in their order: cancelled, where the reschedule had put it. Nothing
    # new to send: the change number is the cancellation's.
    assert (booking.status, booking.start_at, booking.seq) == (BookingStatus.cancelled, SLOTS[1], seq)
    in_order = booking_lines("B-EO2")
    run(settings, [in_order["request"], in_order["early"], in_order["cancel"]])
    assert (booking_of("B-EO2").status, booking_of("B-EO2").start_at) == (BookingStatus.cancelled, SLOTS[1])


def test_a_cancellation_is_final_whatever_arrives_after_it(settings):
    lines = booking_lines()
    run(settings, [lines["request"], lines["early"], lines["late"]])
    # dated before the reschedule that came in already: still cancels
    assert [r.outcome for r in run(settings, [lines["cancel"]])] == ["stored"]
    [result] = run(
        settings, [{**lines["late"], "at": (T3 + timedelta(hours=1)).isoformat(), "start": berlin_text(SLOTS[0])}]
    )
    assert (result.outcome, result.reason) == ("stored", "the booking stays cancelled (at 2026-11-10T13:05:00Z)")
    booking = booking_of("B-EO")
    assert (booking.status, booking.start_at) == (BookingStatus.cancelled, SLOTS[0])
    [earlier] = run(settings, [{**lines["cancel"], "at": T2.isoformat()}])
    assert (earlier.outcome, earlier.reason) == ("unchanged", "already cancelled (at 2026-11-10T13:05:00Z)")
    assert booking_of("B-EO").cancelled_at == T2  # the earliest cancellation counts


def test_a_reschedule_older_than_the_last_one_is_ignored(settings):
    lines = booking_lines()
    run(settings, [lines["request"], lines["late"]])
    [result] = run(settings, [lines["early"]])
    assert (result.outcome, result.reason) == (
        "unchanged",
        "older than the current booking (changed at 2026-11-11T12:00:00Z)",
    )
    assert booking_of("B-EO").start_at == SLOTS[2]


def test_a_cancellation_above_its_booking_in_the_file_applies(settings):
    lines = booking_lines()
    results = run(settings, [lines["cancel"], lines["early"], lines["request"]])
    assert [r.outcome for r in results] == ["stored", "stored", "stored"]
    assert booking_of("B-EO").status == BookingStatus.cancelled


def test_an_order_cancelled_above_its_order_in_the_file_is_cancelled(settings, docs):
    cancel = {"type": "isic.cancel", "order_id": "O-EO", "at": T2.isoformat()}
    results = run(settings, [cancel, isic_order("O-EO", T1)], docs)
    assert [r.outcome for r in results] == ["stored", "stored"]
    assert order_of("O-EO").status == OrderStatus.cancelled
    [result] = run(settings, [{**cancel, "at": T1.isoformat()}], docs)
    assert (result.outcome, result.reason) == ("unchanged", "already cancelled (at 2026-11-10T12:05:00Z)")
