"""Erasure requests and tasks: finding the subject, idempotent opening, free texts,
deadlines and extensions, claiming (SQLite and PostgreSQL), the controller's own copy."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from models.bookings import Booking
from models.consent import ConsentEvent, ConsentRecord
from models.db import get_engine, transaction
from models.erasure import (
    ErasureRequest,
    RequestStatus,
    TaskState,
    UnknownSubject,
    check_free_text,
    claim,
    erase_controller_copy,
    extend,
    open_request,
    personal_data_left,
    tasks_of,
)
from models.identity import pseudonym
from models.recipients import Recipient
from models.subject_index import SubjectMismatch
from models.subjects import DataSubject

from support import TEST_KEY

KEY = TEST_KEY.encode()
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LEASE = timedelta(minutes=15)


def subject(session: Session, email: str, kvnr: str | None = None, **fields) -> DataSubject:
    row = DataSubject(pseudonym=pseudonym(KEY, "email", email), email=email, insurance_number=kvnr, **fields)
    session.add(row)
    session.flush()
    return row


def sent(
    session: Session, who: DataSubject, processor: str, purpose: str, external: str | None = None, removed: bool = False
) -> Recipient:
    row = Recipient(
        subject_id=who.id,
        processor=processor,
        purpose=purpose,
        external_id=external,
        first_sent_at=NOW,
        last_sent_at=NOW,
        removed_at=NOW if removed else None,
    )
    session.add(row)
    session.flush()
    return row


def open_for(session: Session, **kw) -> ErasureRequest:
    kw.setdefault("received_at", NOW)
    kw.setdefault("channel", "letter")
    kw.setdefault("now", max(NOW, kw["received_at"] + timedelta(hours=1)) if kw["received_at"].tzinfo else NOW)
    return open_request(session, key=KEY, **kw)


@pytest.mark.parametrize("text", ["Brief vom 3. März", "Az. 17-2026/3", "", "  Portal  "])
def test_free_text_without_personal_data_is_accepted(text):
    assert check_free_text(text, "reference") == text.strip()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("erika@example.de", "personal data"),
        ("Tel. 0170 5550101", "personal data"),
        ("KVNR A123456780", "personal data"),
        ("x" * 201, "longer than 200"),
        ("Schreiben von Frau Mustermann", "name"),
    ],
)
def test_free_text_that_looks_personal_is_refused_without_being_repeated(settings, text, why):
    person = DataSubject(pseudonym="p", first_name="Erika", last_name="Mustermann")
    with pytest.raises(ValueError, match=why) as raised:
        check_free_text(text, "reference", person)
    assert text.strip() not in str(raised.value) or not text.strip()


def test_a_request_finds_the_subject_and_opens_one_task_per_live_recipient(settings):
    with transaction() as session:
        erika = subject(session, "erika@example.de", "A123456780")
        sent(session, erika, "cleverreach", "consent:newsletter", "17")
        sent(session, erika, "timify", "booking", "65f0")
        sent(session, erika, "flexperto", "video:B-1", removed=True)  # already purged there
        request = open_for(
            session,
            email=" Erika@Example.DE ",
            insurance_number="a123456780",
            subject_id=str(erika.id),
            reference="Brief vom 3. März",
        )
        tasks = tasks_of(session, request.id)
        assert request.subject_id == erika.id and request.status == RequestStatus.open
        assert request.due == date(2026, 4, 2) and request.urgency == "on_time"
        assert [(t.processor, t.purpose, t.external_id, t.state) for t in tasks] == [
            ("cleverreach", "consent:newsletter", "17", "pending"),
            ("timify", "booking", "65f0", "pending"),
        ]


def test_a_second_request_for_the_same_subject_joins_the_open_one(settings):
    with transaction() as session:
        erika = subject(session, "erika@example.de")
        sent(session, erika, "cleverreach", "consent:newsletter")
        first = open_for(session, email="erika@example.de")
        # Data sent after the request was opened is erased too.
        sent(session, erika, "nect", "ident", "case-1")
        second = open_for(session, email="erika@example.de", channel="email")
        assert second.id == first.id
        assert {t.processor for t in tasks_of(session, first.id)} == {"cleverreach", "nect"}
        first.status = RequestStatus.completed
        session.flush()
        third = open_for(session, subject_id=erika.id)
        assert third.id != first.id
    # The database itself refuses a second open request for a subject.
    with pytest.raises(IntegrityError), transaction() as session:
        session.add(ErasureRequest(subject_id=erika.id, received_at=NOW, channel="email", due=date(2026, 4, 2)))


def test_data_sent_again_after_its_erasure_was_verified_is_erased_again(settings):
    with transaction() as session:
        erika = subject(session, "erika@example.de")
        row = sent(session, erika, "timify", "booking", "c-1")
        request = open_for(session, email="erika@example.de")
        [task] = tasks_of(session, request.id)
        task.state, row.removed_at = TaskState.verified, NOW
        session.flush()
        assert open_for(session, email="erika@example.de").id == request.id
        assert task.state == TaskState.verified
        row.removed_at = None  # pushed again meanwhile
        session.flush()
        open_for(session, email="erika@example.de")
        assert task.state == TaskState.pending


@pytest.mark.parametrize(
    ("given", "error"),
    [
        ({"email": "nobody@example.de"}, UnknownSubject),
        ({"subject_id": uuid.uuid4()}, UnknownSubject),
        ({"insurance_number": "A123456780"}, UnknownSubject),
        ({}, ValueError),
        ({"email": "not an address"}, ValueError),
        ({"subject_id": "erika@example.de"}, ValueError),
    ],
)
def test_an_unknown_or_malformed_subject_is_refused_and_nothing_is_stored(settings, given, error):
    with transaction() as session:
        subject(session, "erika@example.de")
    with transaction() as session, pytest.raises(error) as raised:
        open_for(session, **given)
    assert "erika" not in str(raised.value) and "nobody" not in str(raised.value)
    with transaction() as session:
        assert session.exec(select(ErasureRequest)).all() == []


def test_identifiers_of_two_people_are_refused(settings):
    with transaction() as session:
        subject(session, "erika@example.de")
        subject(session, "max@example.de", "A123456780")
    with transaction() as session, pytest.raises(SubjectMismatch):
        open_for(session, email="erika@example.de", insurance_number="A123456780")


def test_a_subject_erased_earlier_is_found_by_the_pseudonym_of_the_address(settings):
    with transaction() as session:
        erika = subject(session, "erika@example.de")
        sent(session, erika, "nect", "ident", "case-1")  # left behind somewhere
        erika.erase_personal_data(NOW)
    with transaction() as session:
        assert open_for(session, email="erika@example.de").subject_id == erika.id


@pytest.mark.parametrize(
    ("received_at", "why"),
    [(datetime(2026, 3, 2, 9, 0), "timezone"), (NOW + timedelta(days=1), "future")],
)
def test_receipt_time_needs_a_zone_and_lies_in_the_past(settings, received_at, why):
    with transaction() as session:
        subject(session, "erika@example.de")
        with pytest.raises(ValueError, match=why):
            open_for(session, email="erika@example.de", received_at=received_at, now=NOW)


def test_the_deadline_is_one_berlin_calendar_month_and_extends_by_the_rules(settings):
    received = datetime(2028, 1, 30, 23, 30, tzinfo=UTC)  # 31 January in Berlin, a leap year
    with transaction() as session:
        subject(session, "erika@example.de", first_name="Erika")
        request = open_for(session, email="erika@example.de", received_at=received)
        assert request.due == date(2028, 2, 29)
        with pytest.raises(ValueError, match="reason"):
            extend(session, request.id, 1, " ", date(2028, 2, 10), date(2028, 2, 10))
        with pytest.raises(ValueError, match="name"):
            extend(session, request.id, 1, "Erika asked twice", date(2028, 2, 10), date(2028, 2, 10))
        with pytest.raises(ValueError, match="too late"):
            extend(session, request.id, 1, "complex", date(2028, 3, 1), date(2028, 3, 1))
        extend(session, request.id, 1, "many processors", date(2028, 2, 10), date(2028, 2, 10))
        assert (request.due, request.extension_months) == (date(2028, 3, 31), 1)
        extend(session, request.id, 1, "one without an API", date(2028, 2, 20), date(2028, 2, 20))
        assert (request.due, request.extension_months) == (date(2028, 4, 30), 2)
        with pytest.raises(ValueError, match="at most 2"):
            extend(session, request.id, 1, "more", date(2028, 2, 20), date(2028, 2, 20))


# claiming -------------------------------------------------------------------------------
def _request_with_tasks(url: str | None = None, states=(TaskState.pending,)) -> tuple[uuid.UUID, list[uuid.UUID]]:
    with transaction(url) as session:
        erika = subject(session, f"{uuid.uuid4().hex[:8]}@example.de")
        for i, _ in enumerate(states):
            sent(session, erika, f"p{i}", "x")
        request = open_request(session, subject_id=erika.id, received_at=NOW, channel="letter", now=NOW)
        tasks = tasks_of(session, request.id)
        for task, state in zip(tasks, states, strict=True):
            task.state = state
        return request.id, [t.id for t in tasks]


def test_a_claimed_task_is_not_claimed_again_until_its_lease_runs_out(settings):
    rid, ids = _request_with_tasks(states=(TaskState.pending, TaskState.failed, TaskState.awaiting_processor))
    today = NOW.date()
    with transaction() as session:
        assert sorted(claim(session, "run-a", NOW, today, LEASE, [rid])) == sorted(ids)
    with transaction() as session:
        assert claim(session, "run-b", NOW + timedelta(minutes=5), today, LEASE, [rid]) == []
        assert claim(session, "run-b", NOW + timedelta(minutes=5), today, LEASE) == []
    with transaction() as session:  # run-a crashed: after its lease, another run takes over
        assert len(claim(session, "run-b", NOW + timedelta(minutes=16), today, LEASE)) == 3
        assert {t.claimed_by for t in tasks_of(session, rid)} == {"run-b"}


def test_verified_manual_and_still_held_tasks_are_not_claimed(settings):
    rid, ids = _request_with_tasks(
        states=(TaskState.verified, TaskState.manual_pending, TaskState.restricted, TaskState.restricted)
    )
    with transaction() as session:
        tasks = tasks_of(session, rid)
        tasks[2].hold_until, tasks[3].hold_until = date(2026, 3, 10), date(2026, 3, 1)
        held_over = tasks[3].id
    with transaction() as session:
        assert claim(session, "run", NOW, date(2026, 3, 2), LEASE, [rid]) == [held_over]


def test_tasks_of_completed_requests_are_left_alone(settings):
    rid, _ = _request_with_tasks()
    with transaction() as session:
        session.get(ErasureRequest, rid).status = RequestStatus.completed
    with transaction() as session:
        assert claim(session, "run", NOW, NOW.date(), LEASE) == []


def test_two_claims_at_once_on_postgres_share_nothing_and_do_not_wait(pg):
    rid, ids = _request_with_tasks(pg, states=(TaskState.pending,) * 4)
    engine = get_engine(pg)
    first = Session(engine)
    try:
        got_first = claim(first, "run-a", NOW, NOW.date(), LEASE, [rid], limit=2)  # not committed yet
        got_second: list = []
        worker = threading.Thread(target=lambda: got_second.extend(_claim_and_commit(engine, "run-b", rid)))
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive(), "the second claim waited for the first (no SKIP LOCKED)"
        first.commit()
    finally:
        first.close()
    assert len(got_first) == 2 and len(got_second) == 2 and not set(got_first) & set(got_second)
    with transaction(pg) as session:
        assert claim(session, "run-c", NOW, NOW.date(), LEASE, [rid]) == []


def _claim_and_commit(engine, owner: str, rid: uuid.UUID) -> list[uuid.UUID]:
    with Session(engine) as session:
        got = claim(session, owner, NOW, NOW.date(), LEASE, [rid])
        session.commit()
        return got


# the controller's own copy ---------------------------------------------------------------
def test_the_controller_copy_is_erased_and_read_back(settings):
    with transaction() as session:
        erika = subject(session, "erika@example.de", "A123456780", first_name="Erika", last_name="Muster")
        booking = Booking(
            booking_ref="B-1",
            subject_id=erika.id,
            channel="video",
            start_at=NOW,
            duration_min=30,
            seq=1,
            first_name="Erika",
            phone="+491701234567",
            concern="Krankengeld",
            flexperto_customer_id="cus_1",
        )
        consent = ConsentRecord(
            subject_id=erika.id,
            list_name="newsletter",
            state="confirmed",
            signup_at=NOW,
            signup_ip="192.0.2.1",
            confirm_ip="192.0.2.2",
            source="https://x.de",
        )
        session.add_all([booking, consent])
        session.flush()
        session.add(ConsentEvent(consent_id=consent.id, kind="signup", at=NOW, ip="192.0.2.1", dedupe_key="k"))
        session.flush()
        assert personal_data_left(session, erika.id) == ["data_subject", "booking", "consent", "consent_event"]
        counts = erase_controller_copy(session, erika.id, NOW)
        assert counts == {"bookings": 1, "isic_orders": 0, "consents": 1}
        assert personal_data_left(session, erika.id) == []
        assert (consent.state, consent.withdraw_channel) == ("withdrawn", "erasure")
        assert booking.chat_purged_at == NOW and erika.pseudonym and erika.erased_at == NOW


def test_an_unknown_or_malformed_request_id_is_a_lookup_error_for_erasure_as_for_rights(settings):
    from models import erasure, rights

    with transaction() as session:
        for get, what in ((erasure.get_request, "erasure request"), (rights.get_request, "rights request")):
            for bad in ("not-a-uuid", str(uuid.uuid4())):
                with pytest.raises(LookupError, match=f"no {what} with this id"):
                    get(session, bad)
            with pytest.raises(LookupError):
                erasure.extend(session, "not-a-uuid", 1, "Rückfragen", date(2026, 1, 2), date(2026, 1, 2))
        # A manual erasure's task, confirmed by its id (psync erasure confirm 999 --evidence …).
        from flows.erasure import confirm_manual

        for bad in ("999", str(uuid.uuid4())):
            with pytest.raises(LookupError, match="no erasure task with this id"):
                confirm_manual(session, bad, "Brief vom 3. Mai", NOW)
