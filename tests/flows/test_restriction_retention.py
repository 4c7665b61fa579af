"""A restriction (Art. 18(1)(b), (c)) pauses the scheduled deletions: a restricted person's
records past every rule's period survive the purges and are counted as "held by
restriction", not overdue; the first run after the lift deletes them."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
import requests
from cryptography.fernet import Fernet
from sqlmodel import select
from typer.testing import CliRunner

from flows import bookings, retention, student_id
from flows.intake import intake_lines
from models.bookings import Booking
from models.consent import ConsentRecord, ConsentState
from models.db import transaction
from models.isic import IsicDocument, IsicOrder
from models.restriction import Restriction, active_restriction
from models.types import utcnow
from psync.cli import app
from psync.sandbox_env import SERVICE_POINTS

from support import JPEG_BYTES, PDF_BYTES, PNG_BYTES, TEST_KEY, sandbox_state

pytestmark = pytest.mark.usefixtures("prefect_harness")
KEY = TEST_KEY.encode()
NOW = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
LAST_DAY = date(2026, 2, 3)  # the last appointment below ends on this Berlin day


def take_in(*lines: str, now: datetime = NOW, **kw) -> None:
    with transaction() as session:
        results = intake_lines(session, KEY, lines, now=now, service_points=SERVICE_POINTS, **kw)
    assert {r.outcome for r in results} <= {"stored"}, results


def restrict(subject_id: uuid.UUID) -> None:
    with transaction() as session:
        session.add(Restriction(subject_id=subject_id, reason="Test", restricted_at=NOW, recorded_at=NOW))


def lift(subject_id: uuid.UUID) -> None:
    with transaction() as session:
        found = active_restriction(session, subject_id)
        assert found is not None
        found.lifted_at, found.lift_reason, found.lift_recorded_at = utcnow(), "Test", utcnow()


def only(model, column="subject_id") -> uuid.UUID:
    with transaction() as session:
        return session.exec(select(getattr(model, column))).one()


def booking(booking_id: str, start: str, channel: str = "branch") -> str:
    event = {
        "type": "booking.request",
        "booking_id": booking_id,
        "channel": channel,
        "start": start,
        "duration_minutes": 30,
        "salutation": "Frau",
        "first_name": "Rita",
        "last_name": "Restricted",
        "phone": "+49 170 7654321",
        "email": "rita.restricted@example.de",
        "birth_date": "1980-05-17",
        "at": NOW.isoformat(),
    }
    if channel == "branch":
        event["service_point"] = "sp-berlin"
    return json.dumps(event)


def test_an_unconfirmed_signup_of_a_restricted_person_is_kept_and_goes_after_the_lift(settings):
    signed = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)  # due on 2026-03-31 (30 days, Berlin)
    signup = {
        "type": "consent.signup",
        "list": "newsletter",
        "email": "nie.bestaetigt@example.de",
        "salutation": "Frau",
        "first_name": "Nie",
        "last_name": "Bestaetigt",
        "ip": "192.0.2.1",
        "at": signed.isoformat(),
        "source": "https://example.de/nl",
        "policy_version": "2026-01",
    }
    take_in(json.dumps(signup), now=signed + timedelta(hours=1))
    subject = only(ConsentRecord)
    restrict(subject)

    counts = retention.enforce_retention(as_of=date(2026, 4, 2))  # past the period: not failed
    assert not counts.get("expired") and counts["retention_overdue"] == 0
    assert counts["retention_held_by_restriction"] == 1
    assert retention.overdue(date(2026, 4, 2), settings) == {}
    assert retention.held_by_restriction(date(2026, 4, 2), settings) == {"R01": 1}
    check = CliRunner().invoke(app, ["retention", "check", "--as-of", "2026-04-02"])
    assert check.exit_code == 0, check.output
    assert "R01" in check.output and "1 held by restriction" in check.output
    assert "nie.bestaetigt" not in check.output

    lift(subject)
    assert retention.overdue(date(2026, 4, 2), settings) == {"R01": 1}  # due again: the run deletes it
    counts = retention.enforce_retention(as_of=date(2026, 4, 2))
    assert counts["expired"] == 1 and counts["retention_held_by_restriction"] == 0
    with transaction() as session:
        assert session.exec(select(ConsentRecord.state)).one() == ConsentState.expired


def test_a_restricted_timify_customer_is_kept_past_the_period_and_goes_after_the_lift(against_sandbox, settings):
    take_in(booking("B-last", "2026-02-03T14:05:00+01:00"))
    bookings.push_bookings()
    subject = only(Booking)
    restrict(subject)

    counts = retention.enforce_retention(as_of=LAST_DAY + timedelta(days=45))
    assert counts["retention_due"] == 0 and counts["retention_overdue"] == 0
    assert counts["retention_held_by_restriction"] == 1
    assert len(sandbox_state(against_sandbox)["timify"]["customers"]) == 1

    lift(subject)
    counts = retention.enforce_retention(as_of=LAST_DAY + timedelta(days=45))
    assert counts["retention_due"] == counts["retention_deleted"] == 1
    assert sandbox_state(against_sandbox)["timify"]["customers"] == {}


def test_a_restricted_persons_video_chat_is_kept_past_the_period_and_goes_after_the_lift(against_sandbox, settings):
    take_in(booking("B-9", "2026-02-02T23:30:00+01:00", channel="video"))
    bookings.push_bookings()
    flexperto = sandbox_state(against_sandbox)["flexperto"]
    [customer_id] = flexperto["customers"]
    requests.post(
        f"{against_sandbox}/_sandbox/flexperto/chats",
        json={"customer_id": customer_id, "at": "2026-02-02T23:00:00Z"},
        timeout=5,
    ).raise_for_status()
    subject = only(Booking)
    restrict(subject)

    assert bookings.purge_video_chat_data(as_of=date(2026, 5, 10)) == {"due": 0}
    assert sandbox_state(against_sandbox)["flexperto"]["archives"]
    assert retention.overdue(date(2026, 5, 10), settings) == {}
    assert retention.held_by_restriction(date(2026, 5, 10), settings)["R07"] == 1

    lift(subject)
    assert bookings.purge_video_chat_data(as_of=date(2026, 5, 10)) == {"due": 1, "chat_purged": 1}
    assert sandbox_state(against_sandbox)["flexperto"]["archives"] == {}


def test_a_restricted_persons_student_id_documents_are_kept_and_go_after_the_lift(
    against_sandbox, settings, monkeypatch, tmp_path
):
    from core.settings import get_settings

    doc_key = Fernet.generate_key().decode()
    monkeypatch.setenv("PSYNC_DOCUMENT_KEY", doc_key)
    get_settings.cache_clear()
    for name, content in (("nachweis.pdf", PDF_BYTES), ("ausweis.png", PNG_BYTES), ("foto.jpg", JPEG_BYTES)):
        (tmp_path / name).write_bytes(content)
    order = {
        "type": "isic.order",
        "order_id": "O-1",
        "first_name": "Lena",
        "last_name": "Studentin",
        "birth_date": "2004-02-29",
        "email": "lena.restricted@example.de",
        "postal_code": "10115",
        "iban": "DE89370400440532013000",
        "institution": "TU Berlin",
        "phone_password": "Sonnenblume7",
        "at": utcnow().isoformat(),
        "documents": {"student_proof": "nachweis.pdf", "id_copy": "ausweis.png", "photo": "foto.jpg"},
    }
    with transaction() as session:
        results = intake_lines(
            session, KEY, [json.dumps(order)], now=utcnow(), base_dir=tmp_path, document_key=doc_key.encode()
        )
    assert {r.outcome for r in results} == {"stored"}
    student_id.forward_student_id_orders()
    requests.post(f"{against_sandbox}/_sandbox/isic/issue", timeout=5).raise_for_status()
    assert student_id.sync_student_id_order_status() == {"issued": 1}
    with transaction() as session:
        order_row = session.exec(select(IsicOrder)).one()
        due, subject = order_row.documents_purge_due, order_row.subject_id
    assert due is not None
    restrict(subject)

    late = due + timedelta(days=5)
    assert student_id.purge_student_id_documents(as_of=late) == {}
    with transaction() as session:
        assert len(session.exec(select(IsicDocument)).all()) == 3
    assert retention.overdue(late, get_settings()).get("R08") is None
    assert retention.held_by_restriction(late, get_settings())["R08"] == 1

    lift(subject)
    assert student_id.purge_student_id_documents(as_of=late) == {"documents_purged": 1}
    with transaction() as session:
        assert session.exec(select(IsicDocument)).all() == []
