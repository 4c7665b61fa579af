"""Erased people do not come back (issue 14): after ``erase_controller_copy`` a subject keeps
only its pseudonym, and no intake line for the same address brings any old value back.

A withdrawal, a confirmation, a line dated before the erasure, a change to an erased booking
or order: each is a no-op that says why, and holds nothing of the person. An ``ident.case``
or ``erasure.request`` is registered under the pseudonym only. A new sign-up (or booking,
or order) dated after the erasure is new data the person gave: it starts from nothing, and a
sign-up needs a new confirmation.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import String
from sqlalchemy import select as sa_select
from sqlmodel import SQLModel, select

from flows.intake import intake_lines
from models.bookings import Booking
from models.consent import ConsentEvent, ConsentRecord, ConsentState, EventKind, changed_since
from models.db import transaction
from models.erasure import ErasureRequest, erase_controller_copy, personal_data_left
from models.identity import pseudonym
from models.isic import IsicOrder
from models.recipients import Recipient
from models.subjects import DataSubject
from psync.sandbox_env import SERVICE_POINTS

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
ERASED = NOW - timedelta(days=10)
BEFORE, AFTER = ERASED - timedelta(days=1), ERASED + timedelta(days=1)
DOC_KEY = Fernet.generate_key()
EMAIL, KVNR = "erika@example.de", "A123456780"
# Everything the person gave before the erasure; none of it may be anywhere afterwards.
OLD = {
    "email": EMAIL,
    "first name": "Edeltraud",
    "last name": "Mustermann",
    "insurance number": KVNR,
    "sign-up IP": "192.0.2.10",
    "confirm IP": "192.0.2.11",
    "service sign-up IP": "192.0.2.12",
    "source": "https://alt.example.de/nl",
    "phone": "+4930901820",
    "concern": "Rueckenschmerzen",
    "IBAN": "DE89370400440532013000",
    "institution": "Alte Hochschule",
    "postal code": "10115",
}


def run(settings, base_dir, *events: dict) -> list:
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


def signup(at: datetime, list_name: str = "newsletter", ip: str = "192.0.2.10", **kw) -> dict:
    event = {
        "type": "consent.signup",
        "list": list_name,
        "email": EMAIL,
        "salutation": "Frau",
        "first_name": "Edeltraud",
        "last_name": "Mustermann",
        "ip": ip,
        "at": at.isoformat(),
        "source": OLD["source"],
        "policy_version": "2026-01",
    }
    if list_name == "service_offers":
        event["insurance_number"] = KVNR
    return {**event, **kw}


def confirm(at: datetime, ip: str = "192.0.2.11", list_name: str = "newsletter") -> dict:
    return {"type": "consent.confirm", "list": list_name, "email": EMAIL, "ip": ip, "at": at.isoformat()}


def withdraw(at: datetime, list_name: str = "newsletter") -> dict:
    return {"type": "consent.withdraw", "list": list_name, "email": EMAIL, "channel": "email", "at": at.isoformat()}


def booking(ref: str, at: datetime, **kw) -> dict:
    return {
        "type": "booking.request",
        "booking_id": ref,
        "channel": "branch",
        "service_point": "sp-berlin",
        "start": "2026-12-03T10:30:00+01:00",
        "duration_minutes": 30,
        "salutation": "Frau",
        "first_name": "Edeltraud",
        "last_name": "Mustermann",
        "phone": "030 901820",
        "email": EMAIL,
        "insurance_number": KVNR,
        "concern": OLD["concern"],
        "at": at.isoformat(),
        **kw,
    }


def order(ref: str, at: datetime) -> dict:
    return {
        "type": "isic.order",
        "order_id": ref,
        "first_name": "Edeltraud",
        "last_name": "Mustermann",
        "birth_date": "2004-02-29",
        "email": EMAIL,
        "postal_code": "10115",
        "iban": "DE89 3704 0044 0532 0130 00",
        "institution": OLD["institution"],
        "phone_password": "Sonnenblume7",
        "at": at.isoformat(),
        "documents": {"student_proof": "nachweis.pdf", "id_copy": "ausweis.png", "photo": "foto.jpg"},
    }


def subject_row(settings) -> DataSubject:
    with transaction() as session:
        subject = session.exec(
            select(DataSubject).where(DataSubject.pseudonym == pseudonym(settings.hmac_key(), "email", EMAIL))
        ).one()
        session.expunge(subject)
        return subject


def rows(model, **where) -> list[dict]:
    with transaction() as session:
        query = select(model)
        for name, value in where.items():
            query = query.where(getattr(model, name) == value)
        return [r.model_dump() for r in session.exec(query)]


def everything(subject_id: uuid.UUID) -> dict:
    """Every column of every row the controller holds about the subject."""
    with transaction() as session:
        consent_ids = list(session.exec(select(ConsentRecord.id).where(ConsentRecord.subject_id == subject_id)))
    return {
        "data_subject": rows(DataSubject, id=subject_id),
        "consent": sorted(rows(ConsentRecord, subject_id=subject_id), key=lambda r: r["list_name"]),
        "consent_event_pii": [
            (e["kind"], e["ip"], e["source"])
            for c in consent_ids
            for e in rows(ConsentEvent, consent_id=c)
            if e["ip"] or e["source"]
        ],
        "booking": rows(Booking, subject_id=subject_id),
        "isic_order": rows(IsicOrder, subject_id=subject_id),
    }


# An old value counts where it stands on its own: "10115" inside a hash or an id's hex
# digits (one row in a few thousand has it) is no postal code.
_OLD_PATTERNS = {
    name: re.compile(rf"(?<![0-9a-z]){re.escape(value.casefold())}(?![0-9a-z])") for name, value in OLD.items()
}


def old_values_anywhere() -> list[str]:
    """Which of the old values some text column of some table still holds (in any case)."""
    found = set()
    with transaction() as session:
        for table in SQLModel.metadata.sorted_tables:
            columns = [c for c in table.columns if isinstance(getattr(c.type, "impl", c.type), String)]
            for row in session.execute(sa_select(*columns)) if columns else ():
                text = " ".join(str(v) for v in row if v is not None).casefold()
                found |= {name for name, pattern in _OLD_PATTERNS.items() if pattern.search(text)}
    return sorted(found)


@pytest.fixture
def erased(settings, docs) -> DataSubject:
    """Erika, on both lists, with a booking, an ISIC order and a Nect case, then erased."""
    lines = [
        signup(ERASED - timedelta(days=20)),
        confirm(ERASED - timedelta(days=20) + timedelta(minutes=5)),
        signup(ERASED - timedelta(days=19), "service_offers", ip="192.0.2.12"),
        booking("B-ER", ERASED - timedelta(days=18)),
        order("O-ER", ERASED - timedelta(days=18)),
        {
            "type": "ident.case",
            "email": EMAIL,
            "case_id": str(uuid.UUID(int=1)),
            "at": (ERASED - timedelta(days=17)).isoformat(),
        },
    ]
    assert {r.outcome for r in run(settings, docs, *lines)} == {"stored"}
    assert old_values_anywhere() == sorted(OLD)  # the scan below sees each of them
    subject = subject_row(settings)
    with transaction() as session:
        erase_controller_copy(session, subject.id, ERASED)
    assert old_values_anywhere() == []
    return subject_row(settings)


def lines_after_erasure(docs) -> list[tuple[dict, str, str]]:
    """(line, outcome, the start of the reason) for every event type."""
    erased_on = "2026-11-10T12:00:00Z"
    before = f"dated before this person's data was erased ({erased_on}); nothing restored"
    return [
        (withdraw(AFTER), "unchanged", "this person's data was erased; nothing to withdraw"),
        (withdraw(AFTER, "service_offers"), "unchanged", "this person's data was erased; nothing to withdraw"),
        (confirm(AFTER), "unchanged", "this person's data was erased; a confirmation needs a new sign-up first"),
        (signup(BEFORE), "unchanged", before),
        (signup(BEFORE, "service_offers", ip="192.0.2.12"), "unchanged", before),
        (
            {
                "type": "booking.reschedule",
                "booking_id": "B-ER",
                "start": "2026-12-04T10:30:00+01:00",
                "at": AFTER.isoformat(),
            },
            "unchanged",
            "this booking's data was erased; nothing to change",
        ),
        (
            {"type": "booking.cancel", "booking_id": "B-ER", "at": AFTER.isoformat()},
            "unchanged",
            "this booking's data was erased; nothing to change",
        ),
        (booking("B-LATE", BEFORE), "unchanged", before),
        ({"type": "isic.cancel", "order_id": "O-ER", "at": AFTER.isoformat()}, "unchanged", "already cancelled"),
        (order("O-LATE", BEFORE), "unchanged", before),
        (
            {"type": "ident.case", "email": EMAIL, "case_id": str(uuid.UUID(int=2)), "at": AFTER.isoformat()},
            "stored",
            "",
        ),
        (
            {
                "type": "erasure.request",
                "email": EMAIL,
                "channel": "email",
                "reference": "Mail vom 11.",
                "at": AFTER.isoformat(),
            },
            "stored",
            "",
        ),
    ]


def test_no_line_for_an_erased_person_brings_anything_back(settings, docs, erased):
    before = everything(erased.id)
    cases = lines_after_erasure(docs)
    results = run(settings, docs, *(line for line, _, _ in cases))
    for (line, outcome, reason), result in zip(cases, results, strict=True):
        assert (result.outcome, result.reason[: len(reason)]) == (outcome, reason), line["type"]
    after = everything(erased.id)
    assert after == before  # every column of the subject, its consents, bookings and orders
    assert after["data_subject"][0]["email"] is None and after["data_subject"][0]["erased_at"] == ERASED
    assert after["consent_event_pii"] == []
    assert old_values_anywhere() == []
    with transaction() as session:
        assert personal_data_left(session, erased.id) == []
        # no second subject, booking or order was made for the old lines
        assert len(session.exec(select(DataSubject)).all()) == 1
        assert {b.booking_ref for b in session.exec(select(Booking))} == {"B-ER"}
        assert {o.order_ref for o in session.exec(select(IsicOrder))} == {"O-ER"}
        # the Nect case is registered (an erasure must find it) under the subject, pseudonymously
        assert {r.external_id for r in session.exec(select(Recipient).where(Recipient.processor == "nect"))} == {
            str(uuid.UUID(int=1)),
            str(uuid.UUID(int=2)),
        }
        assert session.exec(select(ErasureRequest)).one().subject_id == erased.id
    # the no-ops are recorded: the same file again is all duplicates and changes nothing
    assert [r.outcome for r in run(settings, docs, *(line for line, _, _ in cases))] == ["duplicate"] * len(cases)
    assert everything(erased.id) == before


def test_a_new_signup_after_the_erasure_starts_from_nothing_and_needs_a_new_confirmation(settings, docs, erased):
    # A confirmation clicked while erased (an old mail) must not confirm the new sign-up.
    [result] = run(settings, docs, confirm(AFTER + timedelta(hours=2), "198.51.100.9"))
    assert result.outcome == "unchanged"
    fresh = signup(
        AFTER, ip="198.51.100.7", first_name="Marie", last_name="Neumann", source="https://neu.example.de/nl"
    )
    assert [r.outcome for r in run(settings, docs, fresh)] == ["stored"]
    subject = subject_row(settings)
    assert (subject.email, subject.first_name, subject.last_name) == (EMAIL, "Marie", "Neumann")
    assert subject.insurance_number is None and subject.erased_at is None
    with transaction() as session:
        records = {r.list_name: r for r in session.exec(select(ConsentRecord))}
        newsletter_id = records["newsletter"].id
        kinds = [e.kind for e in session.exec(select(ConsentEvent).where(ConsentEvent.consent_id == newsletter_id))]
    newsletter = records["newsletter"]
    assert (newsletter.state, newsletter.signup_ip, newsletter.confirm_at, newsletter.confirm_ip) == (
        ConsentState.pending,
        "198.51.100.7",
        None,
        None,
    )
    assert records["service_offers"].state == ConsentState.withdrawn and records["service_offers"].signup_ip is None
    assert EventKind.erase in kinds  # the erasure stays in the history once erased_at is cleared
    # only the e-mail address came back (given again); nothing else of the old data
    assert [name for name in old_values_anywhere() if name != "email"] == []

    assert [r.outcome for r in run(settings, docs, confirm(AFTER + timedelta(hours=3), "198.51.100.8"))] == ["stored"]
    with transaction() as session:
        [row] = changed_since(session, "newsletter", 0, 10)
    assert (row.state, row.signup_ip, row.confirm_ip, row.first_name) == (
        "confirmed",
        "198.51.100.7",
        "198.51.100.8",
        "Marie",
    )

    # Old lines sent again after the return still restore nothing.
    results = run(settings, docs, signup(BEFORE, ip="192.0.2.99"), confirm(BEFORE, "192.0.2.98"))
    assert [r.outcome for r in results] == ["unchanged", "unchanged"]
    assert all(r.reason.startswith("dated before this person's data was erased") for r in results)
    assert subject_row(settings).first_name == "Marie"
    assert [name for name in old_values_anywhere() if name != "email"] == []


def test_a_withdrawal_while_erased_counts_against_a_new_signup_dated_before_it(settings, docs, erased):
    run(settings, docs, withdraw(AFTER + timedelta(hours=1)))
    results = run(
        settings,
        docs,
        signup(AFTER, ip="198.51.100.7", first_name="Marie"),
        confirm(AFTER + timedelta(minutes=5), "198.51.100.8"),
    )
    assert [r.outcome for r in results] == ["stored", "stored"]
    with transaction() as session:
        record = session.exec(select(ConsentRecord).where(ConsentRecord.list_name == "newsletter")).one()
    assert (record.state, record.withdrawn_at) == (ConsentState.withdrawn, AFTER + timedelta(hours=1))


def test_a_new_booking_after_the_erasure_is_new_data_and_brings_back_nothing_old(settings, docs, erased):
    new_booking = booking(
        "B-NEW",
        AFTER,
        first_name="Marie",
        last_name="Neumann",
        concern="Zahnersatz",
        insurance_number=None,
        birth_date="1980-05-17",
    )
    results = run(settings, docs, new_booking)
    assert [r.outcome for r in results] == ["stored"]
    subject = subject_row(settings)
    assert subject.email == EMAIL and subject.erased_at is None
    assert (subject.first_name, subject.insurance_number) == (None, None)  # a booking keeps its own fields
    with transaction() as session:
        new = session.exec(select(Booking).where(Booking.booking_ref == "B-NEW")).one()
        old = session.exec(select(Booking).where(Booking.booking_ref == "B-ER")).one()
    assert (new.first_name, new.concern) == ("Marie", "Zahnersatz") and old.first_name is None
    assert [name for name in old_values_anywhere() if name not in ("email", "phone")] == []  # given again
    # the consents stay erased: a withdrawal now is still nothing to withdraw
    [result] = run(settings, docs, withdraw(AFTER + timedelta(hours=1)))
    assert (result.outcome, result.reason) == ("unchanged", "this person's data was erased; nothing to withdraw")


def test_a_new_order_after_the_erasure_is_stored(settings, docs, erased):
    assert [r.outcome for r in run(settings, docs, order("O-NEW", AFTER))] == ["stored"]
    assert subject_row(settings).erased_at is None


def test_a_new_signup_and_its_confirmation_in_one_file_work_in_either_order(settings, docs, erased):
    results = run(
        settings,
        docs,
        confirm(AFTER + timedelta(minutes=5), "198.51.100.8"),
        signup(AFTER, ip="198.51.100.7", first_name="Marie"),
    )
    assert [r.outcome for r in results] == ["stored", "stored"]
    with transaction() as session:
        record = session.exec(select(ConsentRecord).where(ConsentRecord.list_name == "newsletter")).one()
    assert (record.state, record.signup_ip, record.confirm_ip) == (
        ConsentState.confirmed,
        "198.51.100.7",
        "198.51.100.8",
    )
