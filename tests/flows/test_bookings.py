"""The booking flows end to end: local database, Prefect, TIMIFY and Flexperto in the sandbox."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, date, datetime, timedelta

import pytest
import requests
from sqlmodel import select
from typer.testing import CliRunner

from connectors.flexperto import FlexpertoEraser
from connectors.timify import Timify
from connectors.transport import FatalError, RetriableError
from flows import bookings, erasure
from flows.intake import intake_lines
from models.audit import AuditEntry, verify
from models.bookings import Booking
from models.cursors import get_cursor
from models.db import transaction
from models.erasure import ErasureRequest
from models.parked import ParkedItem
from models.recipients import Recipient
from psync.cli import app
from psync.sandbox_env import SERVICE_POINTS

from support import TEST_KEY, sandbox_state

pytestmark = pytest.mark.usefixtures("prefect_harness")
KEY = TEST_KEY.encode()
# The website's clock at intake; bookings lie after it. Pushing uses the real clock.
NOW = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
EMAIL, PHONE = "erika.booking@example.de", "+49 170 1234567"


def request(booking_id, channel="branch", start="2026-02-02T10:00:00+01:00", **kw) -> str:
    event = {
        "type": "booking.request",
        "booking_id": booking_id,
        "channel": channel,
        "start": start,
        "duration_minutes": 30,
        "salutation": "Frau",
        "first_name": "Erika",
        "last_name": "Bucher",
        "phone": PHONE,
        "email": EMAIL,
        "birth_date": "1980-05-17",
        "at": NOW.isoformat(),
    }
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
        "external_id": "B-2",
        "email": EMAIL,
        "phone": "+491701234567",
    }
    with transaction() as session:
        register = {(r.processor, r.purpose) for r in session.exec(select(Recipient))}
        video_row = session.exec(select(Booking).where(Booking.booking_ref == "B-2")).one()
        assert get_cursor(session, bookings.CURSOR).position == video_row.seq
    assert register == {("timify", "booking"), ("flexperto", "video:B-2")}
    assert video_row.chat_purge_due == date(2026, 5, 4)  # 3 Feb + 90 days


def test_reschedule_and_cancel_follow_and_a_second_run_sends_nothing(against_sandbox):
    take_in(request("B-1"), request("B-2", channel="video"))
    bookings.push_bookings()
    take_in(
        change("reschedule", "B-1", start="2026-02-05T08:30:00+01:00", duration_minutes=60), change("cancel", "B-2")
    )
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
        json={"customer_id": customer_id, "at": "2026-02-02T23:00:00Z"},
        timeout=5,
    )
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
    lines = [
        request(f"B-{i}", channel="video" if i % 3 == 0 else "branch", email=f"kunde{i}@example.de") for i in range(30)
    ]
    take_in(*lines)
    requests.post(f"{against_sandbox}/_sandbox/faults", json={"fault_rate": 0.2, "seed": 7}, timeout=5)
    for _ in range(2):
        try:
            bookings.push_bookings(records_per_task=10)
            break
        except Exception:  # noqa: BLE001 - a batch gave up; the next run takes it again
            continue
    requests.post(f"{against_sandbox}/_sandbox/faults", json={"fault_rate": 0.0}, timeout=5)
    state = timify_state(against_sandbox)
    assert sorted(a["externalId"] for a in state["appointments"].values()) == sorted(f"B-{i}" for i in range(30))
    assert set(state["creates"]["appointments"].values()) == {1}
    assert len(state["customers"]) == 30 and set(state["creates"]["customers"].values()) == {1}
    flex = flexperto_state(against_sandbox)
    assert sorted(c["external_id"] for c in flex["customers"].values()) == [
        f"B-{i}" for i in (0, 12, 15, 18, 21, 24, 27, 3, 6, 9)
    ]
    assert sum(sandbox_state(against_sandbox)["faults"].values()) > 0


def test_several_people_at_once_each_customer_before_its_appointment_in_booking_order(against_sandbox, monkeypatch):
    # Two bookings per person, the stream interleaving the people; at the default
    # PSYNC_HTTP_IN_FLIGHT several workers send, and per person the calls stay in order:
    # customer, appointment, customer, appointment (booking order).
    take_in(*[request(f"B-{n}-{i}", email=f"kunde{i}@example.de") for n in (1, 2) for i in range(16)])
    calls: list[tuple[str, str, str]] = []
    at_once, most = [0], [0]
    guard = threading.Lock()
    upsert_customer, upsert_appointment = Timify.upsert_customer, Timify.upsert_appointment

    def customer(self, external_id, *args, **kwargs):
        with guard:
            at_once[0] += 1
            most[0] = max(most[0], at_once[0])
        try:
            found = upsert_customer(self, external_id, *args, **kwargs)
        finally:
            with guard:
                at_once[0] -= 1
        calls.append(("customer", external_id, threading.current_thread().name))
        return found

    def appointment(self, booking_ref, *args, **kwargs):
        calls.append(("appointment", booking_ref, threading.current_thread().name))
        return upsert_appointment(self, booking_ref, *args, **kwargs)

    monkeypatch.setattr(Timify, "upsert_customer", customer)
    monkeypatch.setattr(Timify, "upsert_appointment", appointment)
    # Answers after 40 ms: the pool opens up to several people at once (``flows.common.Pace``).
    requests.post(f"{against_sandbox}/_sandbox/faults", json={"latency_ms": 40}, timeout=5)
    try:
        assert bookings.push_bookings()["pushed"] == 32
    finally:
        requests.post(f"{against_sandbox}/_sandbox/faults", json={"latency_ms": 0}, timeout=5)
    with transaction() as session:
        subject_of = {b.booking_ref: str(b.subject_id) for b in session.exec(select(Booking))}
    for i in range(16):
        subject = subject_of[f"B-1-{i}"]
        mine = [(kind, key) for kind, key, _ in calls if key in (subject, f"B-1-{i}", f"B-2-{i}")]
        assert mine == [
            ("customer", subject),
            ("appointment", f"B-1-{i}"),
            ("customer", subject),
            ("appointment", f"B-2-{i}"),
        ]
        assert len({thread for _, key, thread in calls if key in (subject, f"B-1-{i}", f"B-2-{i}")}) == 1
    assert len({thread for _, _, thread in calls}) > 1 and most[0] > 1
    assert set(timify_state(against_sandbox)["creates"]["appointments"].values()) == {1}


def test_no_personal_data_in_logs(against_sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    take_in(request("B-1", channel="video"))
    bookings.push_bookings()
    bookings.purge_video_chat_data(as_of=date(2026, 6, 1))
    for marker in (EMAIL, "Erika", "Bucher", "1701234567", "1980-05-17"):
        assert marker not in caplog.text
    assert "timify" in caplog.text  # the calls are logged, by operation


# the delivery path (flows/delivery.py) at the default batch size -------------------------


def _parked() -> dict[str, tuple[str, str]]:
    with transaction() as session:
        return {i.record_id: (i.state, i.reason) for i in session.exec(select(ParkedItem))}


def _audit(action: str) -> list[tuple[str, str]]:
    with transaction() as session:
        return [(e.outcome, e.detail) for e in session.exec(select(AuditEntry).where(AuditEntry.action == action))]


def test_a_poison_booking_among_1000_is_parked_with_its_reason_and_the_999_others_go(against_sandbox):
    take_in(*[request(f"B-{i}", email=f"kunde{i}@example.de") for i in range(1000)])
    with transaction() as session:  # a start the push refuses (intake would refuse it too)
        poison = session.exec(select(Booking).where(Booking.booking_ref == "B-500")).one()
        poison.start_at += timedelta(minutes=7)
    with pytest.raises(RuntimeError) as failed:
        bookings.push_bookings()  # the default: 500 bookings per task
    message = str(failed.value)
    assert message.startswith("push-bookings: 1 record(s) parked, 0 to retry on the next run")
    assert "B-500: start must lie on the 5-minute grid" in message and "@" not in message
    appointments = {a["externalId"] for a in timify_state(against_sandbox)["appointments"].values()}
    assert len(appointments) == 999 and "B-500" not in appointments
    assert _parked() == {"B-500": ("parked", "start must lie on the 5-minute grid")}
    assert ("parked", "record=B-500 attempts=1 validate") in _audit("push-bookings.park")

    # The on-call engineer sees it, drops it with a reason; the next run is clean.
    runner = CliRunner()
    listed = runner.invoke(app, ["parked", "list"])
    assert listed.exit_code == 0 and "B-500" in listed.output and "push-bookings" in listed.output
    with transaction() as session:
        item_id = str(session.exec(select(ParkedItem.id)).one())
    dropped = runner.invoke(app, ["parked", "drop", item_id, "--reason", "Termin telefonisch neu vereinbart"])
    assert dropped.exit_code == 0, dropped.output
    assert runner.invoke(app, ["parked", "list"]).output.strip() == "nothing parked"
    refused = runner.invoke(app, ["parked", "drop", item_id, "--reason", "nochmal"])
    assert refused.exit_code == 1 and "not parked" in refused.output
    assert bookings.push_bookings() == {}
    with transaction() as session:
        assert verify(session, KEY).ok
    assert [o for o, _ in _audit("push-bookings.park")] == ["parked", "dropped"]


def test_a_retriable_failure_is_tried_first_by_the_next_run_and_holds_nobody_back(against_sandbox, monkeypatch):
    take_in(*[request(f"B-{i}", email=f"kunde{i}@example.de") for i in range(5)])
    original = Timify.upsert_appointment

    def flaky(self, external_id, **kw):
        if external_id == "B-2":
            raise RetriableError("timify", "appointments.create", 503, 5)
        return original(self, external_id, **kw)

    monkeypatch.setattr(Timify, "upsert_appointment", flaky)
    with pytest.raises(RuntimeError, match=r"0 record\(s\) parked, 1 to retry on the next run.*B-2: timify"):
        bookings.push_bookings()
    assert len(timify_state(against_sandbox)["appointments"]) == 4
    assert _parked()["B-2"][0] == "retry"
    monkeypatch.undo()
    assert bookings.push_bookings()["pushed"] == 1  # only B-2: the cursor had passed it
    assert {a["externalId"] for a in timify_state(against_sandbox)["appointments"].values()} == {
        f"B-{i}" for i in range(5)
    }
    assert _parked() == {"B-2": ("resolved", "timify appointments.create: HTTP 503 after 5 attempt(s)")}


def test_an_auth_failure_fails_the_batch_and_parks_nothing(against_sandbox, monkeypatch):
    take_in(request("B-1"))

    def refused(self, *args, **kw):
        raise FatalError("timify", "customers.create", 401)

    monkeypatch.setattr(Timify, "upsert_customer", refused)
    with pytest.raises(FatalError):
        bookings.push_bookings()
    assert _parked() == {}
    monkeypatch.undo()
    assert bookings.push_bookings()["pushed"] == 1


def test_what_a_crashed_batch_sent_is_in_the_register_and_an_erasure_finds_it(against_sandbox, monkeypatch):
    take_in(request("B-1", channel="video", email="absturz@example.de"), request("B-2", email="bleibt@example.de"))

    def die(self):
        raise RuntimeError("process died")  # after the calls, before the commit

    monkeypatch.setattr(bookings._Batch, "commit_register", die)
    with pytest.raises(RuntimeError, match="died"):
        bookings.push_bookings()
    monkeypatch.undo()
    assert len(timify_state(against_sandbox)["customers"]) == 2  # they reached TIMIFY...
    with transaction() as session:  # ...and the register knew before they left
        rows = session.exec(select(Recipient)).all()
        assert {(r.processor, r.confirmed_at is None, r.removed_at is None) for r in rows} == {
            ("timify", True, True),
            ("flexperto", True, True),
        }
        request_id = erasure.open_erasure_request(session, email="absturz@example.de", channel="letter").id
    assert erasure.fan_out_erasure(request_id=request_id) == {"verified": 2, "completed": 1}
    state = sandbox_state(against_sandbox)
    assert "absturz@example.de" not in json.dumps({k: state[k] for k in ("timify", "flexperto")})
    assert "bleibt@example.de" in json.dumps(state["timify"])


def test_a_reschedule_while_the_erasure_is_open_is_held_and_recreates_nothing(against_sandbox, monkeypatch):
    take_in(request("B-1", channel="video", email="geht@example.de"))
    bookings.push_bookings()

    def stuck(self, ctx, task):
        raise RetriableError("flexperto", "customers.delete", 503, 5)

    monkeypatch.setattr(FlexpertoEraser, "erase", stuck)
    with pytest.raises(RuntimeError, match="flexperto"):
        erasure.fan_out_erasure(email="geht@example.de", channel="portal")
    assert timify_state(against_sandbox)["customers"] == {}  # TIMIFY verified, the request still open
    take_in(change("reschedule", "B-1", start="2026-02-09T11:00:00+01:00"))
    assert bookings.push_bookings() == {"held_erasure_open": 1}
    assert timify_state(against_sandbox)["customers"] == {}  # not re-created
    assert ("held", "booking=B-1 channel=video") in _audit("booking.push")
    monkeypatch.undo()
    assert erasure.follow_up_erasures()["completed"] == 1
    with transaction() as session:
        assert session.exec(select(ErasureRequest.status)).one() == "completed"
    assert bookings.push_bookings() == {}


# the call journal (flows/journal.py) -------------------------------------------------------
def _call_rows() -> list[AuditEntry]:
    with transaction() as session:
        return list(session.exec(select(AuditEntry).where(AuditEntry.action.startswith("call."))))


def test_a_batch_that_fails_after_its_calls_has_them_audited_once(against_sandbox, monkeypatch):
    """The batch's data work fails after TIMIFY answered: the data rolls back, the calls
    reach the trail from the journal (under the run that made them), and nothing twice."""
    from flows import journal

    take_in(*[request(f"J-{i}", email=f"j{i}@example.de") for i in range(3)])
    seen = timify_state(against_sandbox)["calls"]
    monkeypatch.setattr(bookings.BookingsJob, "finish", lambda self, batch: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        bookings.push_bookings()
    answered = sum(timify_state(against_sandbox)["calls"].values()) - sum(seen.values())
    rows = _call_rows()
    assert answered > 0 and sum(r.attempts for r in rows) == answered
    assert all(r.detail.startswith("recovered=") for r in rows) and len({r.flow_run_id for r in rows}) == 1
    with transaction() as session:
        [ended] = session.exec(select(AuditEntry).where(AuditEntry.outcome == "ended_before_commit")).all()
    assert ended.action == "push-bookings.batch" and f"calls={len(rows)}" in ended.detail
    assert journal.pending() == []
    monkeypatch.undo()
    assert bookings.push_bookings()["pushed"] == 3  # what the failed batch created is found by our ids
    assert len([r for r in _call_rows() if r.detail.startswith("recovered=")]) == len(rows)
    with transaction() as session:
        assert verify(session, KEY).ok


def test_a_journal_line_reads_back_as_the_call_written(settings):
    """The journal writes its lines without json.dumps of each record: what it wrote must
    still be the JSON of the record, whatever an operation's name holds."""
    import json

    from connectors.transport import CALL_JOURNAL, IN_FLIGHT, CallRecord
    from flows import journal

    calls = [
        CallRecord("timify", 'customers "create" ä\\', None, 0, IN_FLIGHT, 0),
        CallRecord("timify", 'customers "create" ä\\', 201, 2, "ok", 3),
        CallRecord("nect", "cases.create", 409, 1, "fatal"),
    ]
    with journal.journaled("push-bookings") as batch:
        for call in calls:
            CALL_JOURNAL.get()(call)
        lines = (journal.directory() / f"{batch}.calls.jsonl").read_text(encoding="utf-8").splitlines()
    journal.discard(batch)
    assert [json.loads(line) for line in lines[1:]] == [{"job": "push-bookings", **vars(call)} for call in calls]


def test_a_journal_left_by_a_killed_batch_is_audited_by_the_next_and_a_committed_ones_dropped(settings):
    """What a killed process leaves: a journal no process holds. Its calls are audited once,
    a call that was on the wire as "unknown"; a journal whose batch committed is dropped;
    one a live batch holds is left alone."""
    from connectors.transport import CALL_JOURNAL, IN_FLIGHT, CallRecord
    from flows import journal

    with journal.journaled("push-bookings") as killed:
        sink = CALL_JOURNAL.get()
        sink(CallRecord("timify", "customers.create", None, 0, IN_FLIGHT, 0))
        sink(CallRecord("timify", "customers.create", 201, 1, "ok", 0))
        sink(CallRecord("timify", "appointments.create", None, 0, IN_FLIGHT, 0))  # the process died here
    with journal.journaled("push-bookings") as committed:
        pass
    with transaction() as session:
        from flows.common import write_audit

        write_audit(session, [journal.committed("push-bookings", committed)])
    with journal.journaled("push-bookings") as running:
        journal.settle_now()
        assert journal.pending() == [running]  # the live one stays
    assert {(r.action, r.outcome, r.attempts) for r in _call_rows()} == {
        ("call.customers.create", "ok", 1),
        ("call.appointments.create", "unknown", 1),
    }
    assert all(r.detail == f"recovered={killed}" for r in _call_rows())
    journal.settle_now()  # the "running" one ended without a commit and without calls
    journal.settle_now()
    assert journal.pending() == [] and len(_call_rows()) == 2
