"""The booking flows end to end: local database, Prefect, TIMIFY and Flexperto in the sandbox."""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime, timedelta

import pytest
import requests
from sqlmodel import select

from connectors.timify import Timify
from flows import bookings
from models.audit import AuditEntry, verify
from models.bookings import Booking
from models.cursors import get_cursor
from models.db import transaction
from models.intake import intake_lines
from models.recipients import Recipient
from psync.sandbox_env import SERVICE_POINTS
from support import TEST_KEY, sandbox_state

pytestmark = pytest.mark.usefixtures("prefect_harness")
KEY = TEST_KEY.encode()
# The website's clock at intake; bookings lie after it. Pushing uses the real clock.
NOW = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
EMAIL, PHONE = "erika.booking@example.de", "+49 170 1234567"


def request(booking_id, channel="branch", start="2026-02-02T10:00:00+01:00", **kw) -> str:
    event = {
        "type": "booking.request", "booking_id": booking_id, "channel": channel,
        "start": start, "duration_minutes": 30, "salutation": "Frau", "first_name": "Erika",
        "last_name": "Bucher", "phone": PHONE, "email": EMAIL, "birth_date": "1980-05-17",
        "at": NOW.isoformat(),
    }  # fmt: skip
    if channel == "branch":
        event["service_point"] = "sp-berlin"
    event.update(kw)
    return json.dumps(event)


def change(kind, booking_id, **kw) -> str:
    return json.dumps({"type": f"booking.{kind}", "booking_id": booking_id, "at": NOW.isoformat(), **kw})


def take_in(*lines) -> None:
    with transaction() as session:
        results = intake_lines(session, KEY, lines, now=NOW, service_points=SERVICE_POINTS)
    assert {r.outcome for r in results} <= {"stored"}, results


def timify_state(url) -> dict:
    return sandbox_state(url)["timify"]


def flexperto_state(url) -> dict:
    return sandbox_state(url)["flexperto"]


def appointment(url, booking_id) -> dict | None:
    found = [a for a in timify_state(url)["appointments"].values() if a["externalId"] == booking_id]
    return found[0] if found else None


def field_values(customer) -> dict[str, str]:
    return {f["id"]: f["value"] for f in customer["customfields"]}


def test_branch_and_video_bookings_reach_timify_and_flexperto_with_only_given_fields(against_sandbox):
    take_in(request("B-1"), request("B-2", channel="video", start="2026-02-03T14:05:00+01:00"))
    counts = bookings.push_bookings()
    assert counts["pushed"] == 2 and counts["video_registered"] == 1

    state = timify_state(against_sandbox)
    [customer] = state["customers"].values()  # one person, one customer
    values = field_values(customer)
    assert "65c39ebd07a04b9210cccb9d" not in values  # no insurance number was given
    assert values["65c39ebd07a04b9210cccb9b"] == "1980-05-17"
    assert values["65c39ebd07a04b9210cccb96"] == EMAIL
    branch, video = appointment(against_sandbox, "B-1"), appointment(against_sandbox, "B-2")
    assert branch["startDate"] == "2026-02-02T09:00:00Z"  # 10:00 in Berlin, CET
    assert [r["id"] for r in branch["resources"]] == [SERVICE_POINTS["sp-berlin"]]
    assert video["serviceId"] == "65e6d029d9d6e5c324d2aa02" and video["startDate"] == "2026-02-03T13:05:00Z"

    [flex] = flexperto_state(against_sandbox)["customers"].values()
    assert {k: flex[k] for k in ("external_id", "email", "phone")} == {
        "external_id": "B-2", "email": EMAIL, "phone": "+491701234567",
    }  # fmt: skip
    with transaction() as session:
        register = {(r.processor, r.purpose) for r in session.exec(select(Recipient))}
        video_row = session.exec(select(Booking).where(Booking.booking_ref == "B-2")).one()
        assert get_cursor(session, bookings.CURSOR).position == video_row.seq
    assert register == {("timify", "booking"), ("flexperto", "video:B-2")}
    assert video_row.chat_purge_due == date(2026, 5, 4)  # 3 Feb + 90 days


def test_reschedule_and_cancel_follow_and_a_second_run_sends_nothing(against_sandbox):
    take_in(request("B-1"), request("B-2", channel="video"))
    bookings.push_bookings()
    take_in(change("reschedule", "B-1", start="2026-02-05T08:30:00+01:00", duration_minutes=60),
            change("cancel", "B-2"))  # fmt: skip
    counts = bookings.push_bookings()
    assert counts == {"pushed": 1, "cancelled": 1, "chat_purged": 1}
    moved = appointment(against_sandbox, "B-1")
    assert (moved["startDate"], moved["duration"]) == ("2026-02-05T07:30:00Z", 60)
    assert appointment(against_sandbox, "B-2") is None
    assert flexperto_state(against_sandbox)["customers"] == {}
    calls_before = sum(timify_state(against_sandbox)["calls"].values())
    assert bookings.push_bookings() == {}
    assert sum(timify_state(against_sandbox)["calls"].values()) == calls_before


def test_a_crash_between_customer_and_appointment_then_a_rerun_makes_one_of_each(against_sandbox, monkeypatch):
    take_in(request("B-1"))
    real = Timify.upsert_appointment

    def crash(self, *args, **kwargs):
        raise RuntimeError("process died")  # after the customer's create reached TIMIFY

    monkeypatch.setattr(Timify, "upsert_appointment", crash)
    with pytest.raises(RuntimeError):
        bookings.push_bookings()
    assert timify_state(against_sandbox)["appointments"] == {}
    monkeypatch.setattr(Timify, "upsert_appointment", real)
    assert bookings.push_bookings()["pushed"] == 1
    state = timify_state(against_sandbox)
    assert len(state["customers"]) == 1 and len(state["appointments"]) == 1
    assert set(state["creates"]["customers"].values()) == {1}
    assert state["creates"]["appointments"] == {"B-1": 1}


def test_a_manual_run_pushes_the_named_bookings_and_leaves_the_cursor(against_sandbox):
    take_in(request("B-1"), request("B-2"))
    counts = bookings.push_bookings(booking_ids=["B-2", "B-404"])
    assert counts == {"pushed": 1, "not_found": 1}
    assert appointment(against_sandbox, "B-1") is None and appointment(against_sandbox, "B-2")
    with transaction() as session:
        assert get_cursor(session, bookings.CURSOR).position == 0


def test_chat_data_is_kept_on_day_89_and_deleted_and_verified_on_day_90(against_sandbox):
    take_in(request("B-9", channel="video", start="2026-02-02T23:30:00+01:00"))
    bookings.push_bookings()
    [customer_id] = flexperto_state(against_sandbox)["customers"]
    chat = requests.post(
        f"{against_sandbox}/_sandbox/flexperto/chats",
        json={"customer_id": customer_id, "at": "2026-02-02T23:00:00Z"}, timeout=5,
    )  # fmt: skip
    assert chat.status_code == 201 and len(flexperto_state(against_sandbox)["archives"]) == 2

    # Ended 00:00 on 3 Feb in Berlin (the UTC date is still 2 Feb): day 90 is 4 May.
    assert bookings.purge_video_chat_data(as_of=date(2026, 5, 3)) == {"due": 0}
    assert len(flexperto_state(against_sandbox)["archives"]) == 2
    counts = bookings.purge_video_chat_data(as_of=date(2026, 5, 4))
    assert counts == {"due": 1, "chat_purged": 1}
    state = flexperto_state(against_sandbox)
    assert state["customers"] == {} and state["archives"] == {}
    with transaction() as session:
        row = session.exec(select(Recipient).where(Recipient.processor == "flexperto")).one()
        assert row.removed_at is not None
        actions = [(e.action, e.outcome) for e in session.exec(select(AuditEntry))]
        assert ("video.purge", "verified") in actions
        assert verify(session, KEY).ok
    assert bookings.purge_video_chat_data(as_of=date(2026, 5, 5)) == {"due": 0}


def test_an_unverified_purge_fails_the_run_and_stays_due(against_sandbox, monkeypatch):
    take_in(request("B-9", channel="video"))
    bookings.push_bookings()
    monkeypatch.setattr("connectors.flexperto.Flexperto.purge", lambda self, cid: False)
    with pytest.raises(RuntimeError, match="not verified"):
        bookings.purge_video_chat_data(as_of=date(2026, 6, 1))
    with transaction() as session:
        assert session.exec(select(Booking)).one().chat_purged_at is None


def test_with_faults_on_two_runs_end_in_exactly_the_expected_state(against_sandbox, no_sleep):
    lines = [request(f"B-{i}", channel="video" if i % 3 == 0 else "branch",
                     email=f"kunde{i}@example.de") for i in range(30)]  # fmt: skip
    take_in(*lines)
    requests.post(f"{against_sandbox}/_sandbox/faults", json={"fault_rate": 0.2, "seed": 7}, timeout=5)
    for _ in range(2):
        try:
            bookings.push_bookings(records_per_task=10)
            break
        except Exception:  # a batch gave up; the next run takes it again
            continue
    requests.post(f"{against_sandbox}/_sandbox/faults", json={"fault_rate": 0.0}, timeout=5)
    state = timify_state(against_sandbox)
    assert sorted(a["externalId"] for a in state["appointments"].values()) == sorted(f"B-{i}" for i in range(30))
    assert set(state["creates"]["appointments"].values()) == {1}
    assert len(state["customers"]) == 30 and set(state["creates"]["customers"].values()) == {1}
    flex = flexperto_state(against_sandbox)
    assert sorted(c["external_id"] for c in flex["customers"].values()) == [f"B-{i}" for i in (0, 12, 15, 18, 21, 24, 27, 3, 6, 9)]
    assert sum(sandbox_state(against_sandbox)["faults"].values()) > 0


def test_no_personal_data_in_logs(against_sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    take_in(request("B-1", channel="video"))
    bookings.push_bookings()
    bookings.purge_video_chat_data(as_of=date(2026, 6, 1))
    for marker in (EMAIL, "Erika", "Bucher", "1701234567", "1980-05-17"):
        assert marker not in caplog.text
    assert "timify" in caplog.text  # the calls are logged, by operation
