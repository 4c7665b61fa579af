"""Rectification, restriction and objection end to end: every processor in the sandbox,
the jobs' delivery path, the audit trail (flows/amend.py)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
import requests
from cryptography.fernet import Fernet
from sqlmodel import select

from connectors.cleverreach import CleverReachAmender
from core.clock import berlin_today
from core.settings import get_settings
from flows import amend, bookings, newsletter, student_id
from flows.intake import intake_lines
from models.audit import AuditEntry, verify
from models.bookings import Booking
from models.consent import ConsentEvent, ConsentRecord
from models.db import transaction
from models.erasure import UnknownSubject
from models.isic import IsicOrder
from models.parked import ParkedItem
from models.restriction import Restriction, RestrictionHold, active_restriction
from models.rights import Changes
from models.subjects import DataSubject
from models.types import utcnow
from psync.sandbox_env import SERVICE_POINTS

from support import JPEG_BYTES, PDF_BYTES, PNG_BYTES, TEST_KEY, sandbox_state

pytestmark = pytest.mark.usefixtures("prefect_harness")
KEY = TEST_KEY.encode()
DOC_KEY = Fernet.generate_key().decode()

OLD = {
    "email": "anna.alt@example.de",
    "first_name": "Annegret",
    "last_name": "Altmann",
    "phone": "+49 170 5550101",
    "birth": "2004-02-29",
}
NEW = {
    "email": "anna.neu@example.de",
    "first_name": "Annemarie",
    "last_name": "Neumann",
    "phone": "+49 170 5550999",
    "birth": "2004-03-01",
}


@pytest.fixture
def env(against_sandbox, monkeypatch, tmp_path):
    monkeypatch.setenv("PSYNC_DOCUMENT_KEY", DOC_KEY)
    get_settings.cache_clear()
    (tmp_path / "nachweis.pdf").write_bytes(PDF_BYTES)
    (tmp_path / "ausweis.png").write_bytes(PNG_BYTES)
    (tmp_path / "foto.jpg").write_bytes(JPEG_BYTES)
    return against_sandbox, tmp_path


def told_on():
    """The day the person was told of a lift (Art. 18(3)): today, Berlin."""
    return berlin_today(utcnow())


def ago(hours: float) -> str:
    return (utcnow() - timedelta(hours=hours)).isoformat()


def consent_lines(email: str, list_name: str = "newsletter", confirm: bool = True, **extra) -> list[dict]:
    lines = [
        {
            "type": "consent.signup",
            "list": list_name,
            "email": email,
            "salutation": "Frau",
            "first_name": OLD["first_name"],
            "last_name": OLD["last_name"],
            "ip": "192.0.2.11",
            "at": ago(3),
            "source": "https://example.de/nl",
            "policy_version": "2026-01",
            **extra,
        }
    ]
    if confirm:
        lines.append({"type": "consent.confirm", "list": list_name, "email": email, "ip": "198.51.100.7", "at": ago(2)})
    return lines


def booking_line(ref: str, channel: str, start: str) -> dict:
    line = {
        "type": "booking.request",
        "booking_id": ref,
        "channel": channel,
        "start": start,
        "duration_minutes": 30,
        "salutation": "Frau",
        "first_name": OLD["first_name"],
        "last_name": OLD["last_name"],
        "phone": OLD["phone"],
        "email": OLD["email"],
        "birth_date": OLD["birth"],
        "at": ago(3),
    }
    if channel == "branch":
        line["service_point"] = "sp-berlin"
    return line


def order_line(ref: str) -> dict:
    return {
        "type": "isic.order",
        "order_id": ref,
        "first_name": OLD["first_name"],
        "last_name": OLD["last_name"],
        "birth_date": OLD["birth"],
        "email": OLD["email"],
        "postal_code": "10115",
        "iban": "DE02120300000000202051",
        "institution": "TU Berlin",
        "phone_password": "Sonnenblume7",
        "at": ago(3),
        "documents": {"student_proof": "nachweis.pdf", "id_copy": "ausweis.png", "photo": "foto.jpg"},
    }


def take_in(base, *events: dict) -> None:
    with transaction() as session:
        results = intake_lines(
            session,
            KEY,
            [json.dumps(e) for e in events],
            now=utcnow(),
            service_points=SERVICE_POINTS,
            base_dir=base,
            document_key=DOC_KEY.encode(),
        )
    assert {r.outcome for r in results} <= {"stored"}, results


def subject_id(email: str):
    with transaction() as session:
        return session.exec(select(DataSubject.id).where(DataSubject.email == email)).one()


def open_nect_case(email: str) -> None:
    from connectors import nect

    with transaction() as session:
        pseudonym = session.exec(select(DataSubject.pseudonym).where(DataSubject.email == email)).one()
    case = nect.from_settings(get_settings()).open_case(pseudonym)
    line = json.dumps({"type": "ident.case", "email": email, "case_id": case, "at": utcnow().isoformat()})
    with transaction() as session:
        [result] = intake_lines(session, KEY, [line], now=utcnow())
    assert result.outcome == "stored", result.reason


def everywhere(url, base) -> None:
    """Anna at CleverReach (newsletter, via the sync), TIMIFY (branch and video booking),
    Flexperto (video), the ISIC issuer (card issued) and Nect; USU may hold her too."""
    take_in(
        base,
        *consent_lines(OLD["email"]),
        booking_line("B-anna-branch", "branch", "2027-02-02T10:00:00+01:00"),
        booking_line("B-anna-video", "video", "2027-02-03T14:05:00+01:00"),
        order_line("ISIC-anna"),
    )
    newsletter.sync_newsletter_consents()
    bookings.push_bookings()
    student_id.forward_student_id_orders()
    requests.post(f"{url}/_sandbox/isic/issue", timeout=5).raise_for_status()
    student_id.sync_student_id_order_status()
    open_nect_case(OLD["email"])


def receiver(url, group: str, email: str) -> dict | None:
    receivers = sandbox_state(url)["cleverreach"]["groups"][group]["receivers"]
    return receivers.get(email)


def timify_fields(url) -> dict[str, str]:
    state = sandbox_state(url)["timify"]
    [customer] = state["customers"].values()
    names = {f["id"]: (f.get("translationKey") or f.get("label")) for f in state.get("customfields", [])}
    return {names.get(f["id"], f["id"]): f["value"] for f in customer["customfields"]}


def by_processor(outcome: amend.AmendOutcome) -> dict[str, str]:
    return {f"{t.processor} {t.purpose}": t.outcome for t in outcome.told}


def correction_to_new() -> Changes:
    return amend.correction(
        email=NEW["email"],
        first_name=NEW["first_name"],
        last_name=NEW["last_name"],
        phone=NEW["phone"],
        birth_date=NEW["birth"],
    )


# rectification --------------------------------------------------------------------------
def test_rectification_reaches_every_processor_verified_and_a_second_run_changes_nothing(env):
    url, base = env
    everywhere(url, base)
    sid = subject_id(OLD["email"])
    before = receiver(url, "1001", OLD["email"])
    assert before is not None and before["active"]

    outcome = amend.rectify(sid, correction_to_new())

    assert outcome.complete, outcome.report()
    assert by_processor(outcome) == {
        "cleverreach consent:newsletter": "updated",
        "flexperto video:B-anna-video": "updated",
        "isic student-id:ISIC-anna": "updated",
        "nect ident:" + next(t.purpose for t in outcome.told if t.processor == "nect").partition(":")[2]: (
            "nothing_to_send"
        ),
        "timify booking": "updated",
        "usu consent:newsletter": "letter",
    }
    told = {t.processor: t for t in outcome.told}
    # Only what each allow-list permits: CleverReach gets no phone or birth date, Flexperto
    # only contact data, the issuer no phone.
    assert set(told["cleverreach"].fields) == {"email", "first_name", "last_name"}
    assert set(told["flexperto"].fields) == {"email", "phone"}
    assert set(told["isic"].fields) == {"email", "first_name", "last_name", "birth_date"}
    assert set(told["timify"].fields) == {"email", "first_name", "last_name", "phone", "birth_date"}

    # CleverReach: the same receiver (id, group, consent times, proof attributes), new address.
    after = receiver(url, "1001", NEW["email"])
    assert receiver(url, "1001", OLD["email"]) is None
    assert after is not None and after["id"] == before["id"] and after["active"]
    assert (after["activated"], after["registered"]) == (before["activated"], before["registered"])
    assert after["attributes"] == before["attributes"] and after["attributes"]["signup_ip"] == "192.0.2.11"
    assert after["global_attributes"]["firstname"] == NEW["first_name"]
    assert after["global_attributes"]["lastname"] == NEW["last_name"]
    state = sandbox_state(url)
    [flex] = state["flexperto"]["customers"].values()
    assert (flex["email"], flex["phone"]) == (NEW["email"], "+491705550999")
    holder = state["isic"]["cardholders"]["ISIC-anna"]
    assert (holder["firstName"], holder["lastName"], holder["dateOfBirth"], holder["email"]) == (
        NEW["first_name"],
        NEW["last_name"],
        NEW["birth"],
        NEW["email"],
    )
    [customer] = state["timify"]["customers"].values()
    values = {f["value"] for f in customer["customfields"]}
    assert {NEW["email"], NEW["first_name"], NEW["last_name"], NEW["birth"], "+491705550999"} <= values
    assert not {OLD["email"], OLD["first_name"], OLD["last_name"], OLD["birth"]} & values

    # USU has no API: a letter naming the corrected values.
    [letter] = outcome.letters.values()
    assert "Berichtigung" in letter and NEW["email"] in letter and "USU GmbH" in letter
    assert "Telefonnummer" not in letter  # USU works on CleverReach's data: no phone there

    # Our own copy: the subject, the bookings, the order (only the fields they hold).
    with transaction() as session:
        subject = session.get(DataSubject, sid)
        assert (subject.email, subject.first_name, subject.last_name) == (
            NEW["email"],
            NEW["first_name"],
            NEW["last_name"],
        )
        for booking in session.exec(select(Booking).where(Booking.subject_id == sid)):
            assert (booking.phone, booking.birth_date.isoformat(), booking.last_name) == (
                "+491705550999",
                NEW["birth"],
                NEW["last_name"],
            )
        order = session.exec(select(IsicOrder)).one()
        assert (order.first_name, order.birth_date.isoformat()) == (NEW["first_name"], NEW["birth"])
    assert outcome.local == {"data_subject": 1, "booking": 2, "isic_order": 1}

    held_before = sandbox_state(url)
    again = amend.rectify(sid, correction_to_new())
    assert again.complete and again.local == {}
    assert {t.outcome for t in again.told if t.how == "api"} <= {"unchanged", "nothing_to_send"}
    after_again = sandbox_state(url)
    for name in ("cleverreach", "flexperto", "isic"):
        key = "groups" if name == "cleverreach" else ("customers" if name == "flexperto" else "cardholders")
        assert after_again[name][key] == held_before[name][key]
    assert after_again["timify"]["customers"] == held_before["timify"]["customers"]

    # The report and the audit trail name no value, old or new.
    text = json.dumps(outcome.report()) + json.dumps(again.report()) + outcome.summary()
    with transaction() as session:
        text += " ".join(f"{e.action} {e.outcome} {e.detail}" for e in session.exec(select(AuditEntry)))
        assert verify(session, KEY).ok
    for value in (*OLD.values(), *NEW.values(), "5550999", "5550101"):
        assert value not in text


def test_rectification_of_a_newsletter_only_subscriber_and_the_old_address_is_free(env):
    url, base = env
    take_in(base, *consent_lines("bert@example.de"))
    newsletter.sync_newsletter_consents()
    sid = subject_id("bert@example.de")

    outcome = amend.rectify(sid, amend.correction(email="bert.neu@example.de"))
    assert by_processor(outcome) == {"cleverreach consent:newsletter": "updated", "usu consent:newsletter": "letter"}
    assert receiver(url, "1001", "bert.neu@example.de") is not None
    assert receiver(url, "1001", "bert@example.de") is None
    assert amend.rectify(sid, amend.correction(email="bert.neu@example.de")).local == {}

    # A sync after it sends nothing twice, and the old address now names nobody: a new
    # sign-up with it, dated after the correction, is a new person, not Bert.
    newsletter.sync_newsletter_consents()
    assert len(sandbox_state(url)["cleverreach"]["groups"]["1001"]["receivers"]) == 1
    take_in(base, *consent_lines("bert@example.de", confirm=False, at=utcnow().isoformat()))
    with transaction() as session:
        assert len(session.exec(select(DataSubject)).all()) == 2
        assert len(session.exec(select(ConsentRecord).where(ConsentRecord.subject_id == sid)).all()) == 1


def test_lines_dated_before_an_address_correction_arriving_after_it_are_the_persons(env):
    # The website's withdrawal and the person's erasure letter, both under the old address
    # and dated before the correction, arrive after it: by event time each is the person's
    # latest decision. Before, the old address named nobody: the withdrawal was kept for a
    # stranger (Bert stayed subscribed), the erasure completed with nothing erased.
    url, base = env
    take_in(
        base,
        *consent_lines("bert@example.de"),
        *consent_lines("bert@example.de", "service_offers", insurance_number="A123456780"),
    )
    newsletter.sync_newsletter_consents()
    sid = subject_id("bert@example.de")
    amend.rectify(sid, amend.correction(email="bert.neu@example.de"))
    assert receiver(url, "1001", "bert.neu@example.de") is not None

    withdraw = {
        "type": "consent.withdraw",
        "list": "newsletter",
        "email": "bert@example.de",
        "channel": "email",
        "at": ago(1),
    }
    take_in(base, withdraw)
    with transaction() as session:
        assert len(session.exec(select(DataSubject)).all()) == 1  # no stranger made
        states = {r.list_name: r.state for r in session.exec(select(ConsentRecord))}
    assert states == {"newsletter": "withdrawn", "service_offers": "confirmed"}
    newsletter.sync_newsletter_consents()
    assert receiver(url, "1001", "bert.neu@example.de") is None

    # The same withdrawal dated after the correction is someone else's: Bert stays as he is.
    with transaction() as session:
        later = json.dumps({**withdraw, "list": "service_offers", "at": utcnow().isoformat()})
        [result] = intake_lines(session, KEY, [later], now=utcnow())
    assert result.outcome == "unchanged"  # kept for the address's new owner, if any
    with transaction() as session:
        mine = session.exec(select(ConsentRecord).where(ConsentRecord.subject_id == sid)).all()
        assert {r.list_name: r.state for r in mine}["service_offers"] == "confirmed"

    from flows import erasure

    letter = {"email": "bert@example.de", "channel": "letter", "received_at": utcnow() - timedelta(hours=1)}
    with transaction() as session:
        request = erasure.open_erasure_request(session, **letter)
        assert request.subject_id == sid
    late = {**letter, "received_at": utcnow()}
    with pytest.raises(UnknownSubject), transaction() as session:
        erasure.open_erasure_request(session, **late)  # after the correction the old address is nobody's


def test_the_old_address_is_the_persons_for_old_lines_even_once_someone_else_has_it_and_after_an_erasure(env):
    from models.erasure import erase_controller_copy

    url, base = env
    take_in(base, *consent_lines("bert@example.de"))
    newsletter.sync_newsletter_consents()
    bert = subject_id("bert@example.de")
    amend.rectify(bert, amend.correction(email="bert.neu@example.de"))
    # Tina is given Bert's old address and signs up with it.
    take_in(base, *consent_lines("bert@example.de", confirm=False, at=utcnow().isoformat()))
    tina = subject_id("bert@example.de")
    assert tina != bert

    def take(line: dict) -> str:
        with transaction() as session:
            [result] = intake_lines(session, KEY, [json.dumps(line)], now=utcnow(), base_dir=base)
        print(result.reason)
        return result.outcome

    # Bert's withdrawal, dated before his correction, arrives: it is his, not Tina's.
    withdraw = {"type": "consent.withdraw", "list": "newsletter", "email": "bert@example.de", "channel": "email"}
    assert take({**withdraw, "at": ago(1)}) == "stored"
    with transaction() as session:
        states = {r.subject_id: r.state for r in session.exec(select(ConsentRecord))}
    assert states == {bert: "withdrawn", tina: "pending"}

    # Bert is erased. His booking dated before that, under the address he had then, arrives
    # late: it restores nothing, and nobody new is made of his old data.
    with transaction() as session:
        erase_controller_copy(session, bert, utcnow())
    assert (
        take(
            booking_line("B-late", "video", "2027-02-03T14:05:00+01:00")
            | {
                "email": "bert.neu@example.de",
                "at": ago(0.5),
            }
        )
        == "unchanged"
    )
    with transaction() as session:
        assert len(session.exec(select(DataSubject)).all()) == 2
        assert not session.exec(select(Booking)).all()


def test_rectification_refuses_another_subjects_address_and_changes_nothing(env):
    url, base = env
    take_in(base, *consent_lines("bert@example.de"), *consent_lines("carla@example.de"))
    newsletter.sync_newsletter_consents()
    held = sandbox_state(url)["cleverreach"]["groups"]
    with pytest.raises(ValueError, match="belongs to another data subject"):
        amend.rectify(subject_id("bert@example.de"), amend.correction(email="carla@example.de"))
    assert sandbox_state(url)["cleverreach"]["groups"] == held
    with pytest.raises(ValueError, match="invalid correction: email"):
        amend.correction(email="not an address")
    with pytest.raises(ValueError, match="at least one"):
        amend.correction()
    with pytest.raises(UnknownSubject):
        amend.rectify("00000000-0000-0000-0000-000000000000", amend.correction(first_name="X"))


# restriction ----------------------------------------------------------------------------
def test_holds_a_lift_did_not_see_are_released_and_sent_by_each_jobs_next_run(env, monkeypatch):
    # On PostgreSQL a batch that read her as restricted just before the lift committed writes
    # its hold after the lift's release looked; here the lift releases nothing at all.
    url, base = env
    everywhere(url, base)
    sid = subject_id(OLD["email"])
    assert amend.restrict(sid, reason_text="Richtigkeit bestritten (Art. 18 Abs. 1 lit. a)").complete
    take_in(
        base,
        booking_line("B-anna-later", "video", "2027-03-03T14:05:00+01:00"),
        {**order_line("ISIC-anna-2"), "at": ago(1)},
        *consent_lines(OLD["email"], "service_offers", insurance_number="A123456780"),
    )
    assert bookings.push_bookings().get("held_restricted") == 1
    assert student_id.forward_student_id_orders().get("held_restricted") == 1
    assert newsletter.sync_newsletter_consents().get("held_restricted") == 1
    monkeypatch.setattr(amend, "release", lambda *args, **kwargs: 0)
    assert amend.lift_restriction(sid, reason_text="Daten korrekt", informed_on=told_on()).local == {}
    # Nothing else changed: only the holds make each job's next run take a batch.
    assert bookings.push_bookings().get("pushed") == 1
    assert student_id.forward_student_id_orders().get("forwarded") == 1
    assert newsletter.sync_newsletter_consents().get("pushed") == 1
    state = sandbox_state(url)
    assert len(state["timify"]["appointments"]) == 3
    assert "ISIC-anna-2" in state["isic"]["cardholders"]
    assert OLD["email"] in state["cleverreach"]["groups"]["1002"]["receivers"]
    with transaction() as session:
        assert [h.released_at is not None for h in session.exec(select(RestrictionHold))] == [True] * 3


def test_restriction_holds_the_next_push_of_every_job_and_lifting_lets_it_go(env):
    url, base = env
    everywhere(url, base)
    sid = subject_id(OLD["email"])
    activated = receiver(url, "1001", OLD["email"])["activated"]

    outcome = amend.restrict(sid, reason_text="Richtigkeit bestritten (Art. 18 Abs. 1 lit. a)")
    assert outcome.complete
    told = by_processor(outcome)
    assert told["cleverreach consent:newsletter"] == "deactivated"
    assert {told[k] for k in told if not k.startswith("cleverreach")} == {"letter"}
    assert receiver(url, "1001", OLD["email"])["active"] is False
    assert "Einschränkung" in outcome.letters["timify booking"]
    assert "nicht sperren" in outcome.letters["timify booking"]  # says what the API cannot
    assert amend.restrict(sid, reason_text="noch einmal").complete  # idempotent
    # Inactive at CleverReach for the restriction is no unsubscribe: the consent stands.
    assert newsletter.pull_newsletter_unsubscribes().get("withdrawn") is None
    with transaction() as session:
        assert {r.state for r in session.exec(select(ConsentRecord))} == {"confirmed"}
    with transaction() as session:
        assert len(session.exec(select(Restriction)).all()) == 1

    # New data of hers for every job while restricted: nothing of it leaves.
    take_in(
        base,
        booking_line("B-anna-later", "video", "2027-03-03T14:05:00+01:00"),
        {**order_line("ISIC-anna-2"), "at": ago(1)},
        *consent_lines(OLD["email"], "service_offers", insurance_number="A123456780"),
    )
    counts = bookings.push_bookings()
    assert counts.get("held_restricted") == 1, counts
    assert student_id.forward_student_id_orders().get("held_restricted") == 1
    assert newsletter.sync_newsletter_consents().get("held_restricted") == 1
    state = sandbox_state(url)
    assert len(state["timify"]["appointments"]) == 2
    assert "ISIC-anna-2" not in state["isic"]["cardholders"]
    assert state["cleverreach"]["groups"]["1002"]["receivers"] == {}
    assert not any(c["external_id"] == "B-anna-later" for c in state["flexperto"]["customers"].values())
    with transaction() as session:
        assert len(session.exec(select(RestrictionHold)).all()) == 3
        assert session.exec(select(ParkedItem)).all() == []  # held, not parked
    # A second run holds nothing new and sends nothing.
    assert bookings.push_bookings().get("held_restricted") is None

    with pytest.raises(ValueError, match="reason"):
        amend.lift_restriction(sid, reason_text="", informed_on=told_on())
    lifted = amend.lift_restriction(sid, reason_text="Richtigkeit geprüft, Daten korrekt", informed_on=told_on())
    assert lifted.complete and lifted.local == {"released": 3}
    assert by_processor(lifted)["cleverreach consent:newsletter"] == "reactivated"
    back = receiver(url, "1001", OLD["email"])
    assert back["active"] and back["activated"] == activated  # the double opt-in's time stays
    assert "Aufhebung" in lifted.letters["timify booking"]

    assert bookings.push_bookings().get("pushed", 0) >= 1
    student_id.forward_student_id_orders()
    newsletter.sync_newsletter_consents()
    state = sandbox_state(url)
    assert len(state["timify"]["appointments"]) == 3
    assert "ISIC-anna-2" in state["isic"]["cardholders"]
    assert OLD["email"] in state["cleverreach"]["groups"]["1002"]["receivers"]
    with transaction() as session:
        restriction = session.exec(select(Restriction)).one()
        assert restriction.lifted_at is not None and restriction.lift_reason == "Richtigkeit geprüft, Daten korrekt"
        assert all(h.released_at is not None for h in session.exec(select(RestrictionHold)))
        assert {i.state for i in session.exec(select(ParkedItem))} == {"resolved"}
    with pytest.raises(ValueError, match="no restriction in force"):
        amend.lift_restriction(sid, reason_text="nochmal", informed_on=told_on())


def test_a_withdrawal_still_goes_while_restricted(env):
    url, base = env
    take_in(base, *consent_lines("bert@example.de"))
    newsletter.sync_newsletter_consents()
    sid = subject_id("bert@example.de")
    with pytest.raises(ValueError, match="personal data"):
        amend.restrict(sid, reason_text="bestritten von bert@example.de")
    amend.restrict(sid, reason_text="Widerspruch wird geprüft")
    take_in(
        base,
        {
            "type": "consent.withdraw",
            "list": "newsletter",
            "email": "bert@example.de",
            "channel": "portal",
            "at": ago(0.5),
        },
    )
    newsletter.sync_newsletter_consents()
    assert receiver(url, "1001", "bert@example.de") is None
    lifted = amend.lift_restriction(sid, reason_text="erledigt", informed_on=told_on())
    assert "cleverreach consent:newsletter" not in by_processor(lifted)  # removed: nothing to reactivate


# objection ------------------------------------------------------------------------------
def test_objection_withdraws_every_list_and_removes_at_cleverreach(env):
    url, base = env
    take_in(
        base,
        *consent_lines("bert@example.de"),
        *consent_lines("bert@example.de", "service_offers", insurance_number="A123456780"),
    )
    newsletter.sync_newsletter_consents()
    assert receiver(url, "1001", "bert@example.de") and receiver(url, "1002", "bert@example.de")
    sid = subject_id("bert@example.de")
    at = utcnow() - timedelta(minutes=5)
    with pytest.raises(ValueError, match="channel must be one of"):
        amend.object_to_all(sid, channel="fax", at=at)
    with pytest.raises(ValueError, match="future"):
        amend.object_to_all(sid, channel="letter", at=utcnow() + timedelta(hours=1))

    outcome = amend.object_to_all(sid, channel="letter", at=at)

    assert outcome.complete, outcome.report()
    assert by_processor(outcome) == {
        "controller consent:newsletter": "withdrawn",
        "controller consent:service_offers": "withdrawn",
        "cleverreach consent:newsletter": "removed",
        "cleverreach consent:service_offers": "removed",
        "usu consent:newsletter": "letter",  # the agency works on the newsletter's data: told too
    }
    letter = outcome.letters["usu consent:newsletter"]
    assert "USU" in letter and "Art. 7 Abs. 3, Art. 21" in letter and "bert@example.de" in letter
    assert receiver(url, "1001", "bert@example.de") is None
    assert receiver(url, "1002", "bert@example.de") is None
    with transaction() as session:
        records = session.exec(select(ConsentRecord).where(ConsentRecord.subject_id == sid)).all()
        assert {(r.state, r.withdraw_channel, r.withdrawn_at) for r in records} == {("withdrawn", "letter", at)}
        events = session.exec(select(ConsentEvent).where(ConsentEvent.kind == "withdraw")).all()
        assert {(e.channel, e.at) for e in events} == {("letter", at)} and len(events) == 2
    again = amend.object_to_all(sid, channel="letter", at=at)
    assert by_processor(again) == {
        "controller consent:newsletter": "unchanged",
        "controller consent:service_offers": "unchanged",
        "usu consent:newsletter": "letter",  # the same letter again: nothing tells us it was done
    }
    # The next sync has nothing left to remove or push.
    assert newsletter.sync_newsletter_consents().get("removed", 0) == 0


def test_an_objection_withdraws_a_confirmation_awaiting_its_signup(env):
    # The click came first (its sign-up is in another file), then the objection: the sign-up,
    # dated before the objection, arrives last and must not subscribe the person.
    with transaction() as session:
        kept = intake_lines(session, KEY, [json.dumps(consent_lines("cleo@example.de")[1])], now=utcnow())
    assert [r.outcome for r in kept] == ["pending"]
    with transaction() as session:
        sid = session.exec(select(ConsentRecord.subject_id)).one()
    outcome = amend.object_to_all(sid, channel="letter", at=utcnow() - timedelta(minutes=5))
    assert by_processor(outcome) == {"controller consent:newsletter": "withdrawn"}
    with transaction() as session:
        late = intake_lines(session, KEY, [json.dumps(consent_lines("cleo@example.de")[0])], now=utcnow())
    assert [r.outcome for r in late] == ["stored"]  # its proof is kept, the consent withdrawn
    with transaction() as session:
        record = session.exec(select(ConsentRecord).where(ConsentRecord.list_name == "newsletter")).one()
        assert (record.state, record.withdraw_channel, record.confirm_ip) == ("withdrawn", "letter", "198.51.100.7")
    assert newsletter.sync_newsletter_consents() == {"not_pushed_withdrawn": 1}


# through the rights plumbing: psync request … ------------------------------------------
def test_every_request_through_the_command_line_and_the_rights_flow(env):
    from typer.testing import CliRunner

    from models.rights import RightsRequest
    from psync.cli import app

    url, base = env
    take_in(base, *consent_lines("bert@example.de"))
    newsletter.sync_newsletter_consents()
    runner = CliRunner()

    def psync(*args: str) -> str:
        result = runner.invoke(app, ["request", *args])
        assert result.exit_code == 0, result.output
        return result.output

    said = psync(
        "rectification", "--email", "bert@example.de", "--new-email", "bert.neu@example.de", "--channel", "letter"
    )
    assert '"rectified": 1' in said and "bert.neu" not in said
    rid = said.split()[1]
    shown = psync("show", rid)
    assert "art19-report.json" in shown and "letter-usu-consent_newsletter.txt" in shown
    assert "bert.neu@example.de" in psync("show", rid, "--file", "letter-usu-consent_newsletter.txt")
    assert '"outcome": "updated"' in psync("show", rid, "--file", "art19-report.json")
    assert receiver(url, "1001", "bert.neu@example.de") is not None

    assert '"deactivated": 1' in psync("restriction", "--email", "bert.neu@example.de")
    assert receiver(url, "1001", "bert.neu@example.de")["active"] is False
    lifted = psync(
        "lift", "--email", "bert.neu@example.de", "--reason", "Richtigkeit geprüft", "--informed-on", str(told_on())
    )
    assert '"reactivated"' in lifted and "bert" not in lifted
    assert receiver(url, "1001", "bert.neu@example.de")["active"] is True

    objected = psync("objection", "--email", "bert.neu@example.de", "--channel", "portal")
    assert '"consents_withdrawn": 1' in objected and '"removed": 1' in objected
    assert receiver(url, "1001", "bert.neu@example.de") is None
    with transaction() as session:
        # The list Bert never signed up for gets the withdrawal too, for a late sign-up.
        records = session.exec(select(ConsentRecord)).all()
        assert {(r.list_name, r.state, r.withdraw_channel) for r in records} == {
            ("newsletter", "withdrawn", "portal"),
            ("service_offers", "withdrawn", "portal"),
        }
        requests_ = session.exec(select(RightsRequest)).all()
        assert {(r.right, r.status) for r in requests_} == {
            ("rectification", "completed"),
            ("restriction", "completed"),
            ("objection", "completed"),
        }
        assert all(r.changes is None for r in requests_)  # the new values are blanked once answered


def test_a_processor_failing_leaves_our_copy_and_the_request_open_and_a_rerun_completes(env, monkeypatch):
    from connectors.timify import TimifyAmender
    from connectors.transport import FatalError

    url, base = env
    everywhere(url, base)
    sid = subject_id(OLD["email"])

    def refused(self, client, holder, changes):
        raise FatalError("timify", "customers.update", 422)

    with monkeypatch.context() as patched:
        patched.setattr(TimifyAmender, "update", refused)
        first = amend.rectify(sid, correction_to_new())
    assert not first.complete and first.local == {}
    assert by_processor(first)["timify booking"] == "failed"
    assert by_processor(first)["cleverreach consent:newsletter"] == "updated"
    with transaction() as session:
        assert session.get(DataSubject, sid).email == OLD["email"]  # ours waits for every processor

    second = amend.rectify(sid, correction_to_new())
    assert second.complete
    assert by_processor(second)["timify booking"] == "updated"
    # Found under the new address though ours still had the old one: nothing sent twice.
    assert by_processor(second)["cleverreach consent:newsletter"] == "unchanged"
    assert second.local == {"data_subject": 1, "booking": 2, "isic_order": 1}


def test_a_lift_whose_reactivation_fails_lifts_nothing_and_a_second_lift_completes(env, monkeypatch):
    url, base = env
    take_in(base, *consent_lines("carla@example.de"))
    newsletter.sync_newsletter_consents()
    sid = subject_id("carla@example.de")
    amend.restrict(sid, reason_text="Richtigkeit bestritten")
    assert receiver(url, "1001", "carla@example.de")["active"] is False
    monkeypatch.setattr(CleverReachAmender, "reactivate", lambda self, client, holder: False)
    failed = amend.lift_restriction(sid, reason_text="geprüft", informed_on=told_on())
    assert failed.complete is False
    with transaction() as session:  # still in force: the receiver stays paused, and is no unsubscribe
        assert active_restriction(session, sid) is not None
    assert newsletter.pull_newsletter_unsubscribes()["inactive_at_processor"] == 1
    with transaction() as session:
        assert session.exec(select(ConsentRecord.state).where(ConsentRecord.subject_id == sid)).one() == "confirmed"
    monkeypatch.undo()
    lifted = amend.lift_restriction(sid, reason_text="geprüft", informed_on=told_on())
    assert lifted.complete and receiver(url, "1001", "carla@example.de")["active"] is True


def test_a_bad_new_value_from_the_command_line_opens_no_request(env):
    from typer.testing import CliRunner

    from models.rights import RightsRequest
    from psync.cli import app

    url, base = env
    take_in(base, *consent_lines("dora@example.de"))
    runner = CliRunner()
    for option, value in (("--new-phone", "12"), ("--new-email", "keine-adresse"), ("--new-birth-date", "2999-01-01")):
        result = runner.invoke(app, ["request", "rectification", "--email", "dora@example.de", option, value])
        assert result.exit_code != 0 and "changes: invalid" in result.output, result.output
        assert value not in result.output
    with transaction() as session:
        assert session.exec(select(RightsRequest)).all() == []


def test_a_lift_needs_the_day_the_person_was_told_and_a_bad_one_changes_nothing(env):
    from typer.testing import CliRunner

    from models.restriction import InformedOnError
    from psync.cli import app

    url, base = env
    take_in(base, *consent_lines("erna@example.de"))
    newsletter.sync_newsletter_consents()
    sid = subject_id("erna@example.de")
    amend.restrict(sid, reason_text="Richtigkeit bestritten")
    runner = CliRunner()
    lift = ["request", "lift", "--email", "erna@example.de", "--reason", "Richtigkeit geprüft"]
    today = told_on()
    with transaction() as session:
        trail = len(session.exec(select(AuditEntry)).all())

    for given in ([], ["gestern"], ["2026-13-01"], [str(today + timedelta(days=1))], [str(today - timedelta(days=1))]):
        result = runner.invoke(app, [*lift, *(["--informed-on", *given] if given else [])])
        assert result.exit_code == 2, (given, result.output)
        assert "informed-on" in result.output and "erna" not in result.output
    assert "future" in runner.invoke(app, [*lift, "--informed-on", str(today + timedelta(days=1))]).output
    assert (
        "before the restriction began"
        in runner.invoke(app, [*lift, "--informed-on", str(today - timedelta(days=1))]).output
    )
    with pytest.raises(InformedOnError, match="required"):
        amend.lift_restriction(sid, reason_text="geprüft", informed_on=None)
    # Nothing changed: still restricted, still paused at CleverReach, nothing audited.
    with transaction() as session:
        assert active_restriction(session, sid) is not None
        assert len(session.exec(select(AuditEntry)).all()) == trail
    assert receiver(url, "1001", "erna@example.de")["active"] is False

    lifted = runner.invoke(app, [*lift, "--informed-on", str(today)])
    assert lifted.exit_code == 0, lifted.output
    assert f'"informed_on": "{today}"' in lifted.output  # in the lift report
    with transaction() as session:
        restriction = session.exec(select(Restriction)).one()
        assert restriction.lifted_at is not None and restriction.lift_informed_on == today
        recorded = session.exec(select(AuditEntry).where(AuditEntry.action == "restriction.lift")).all()
        assert any(e.outcome == "recorded" and f"informed_on={today}" in e.detail for e in recorded)

    # The access package shows it with the rest of the restriction row.
    said = runner.invoke(app, ["request", "access", "--email", "erna@example.de"])
    assert said.exit_code == 0, said.output
    rid = said.output.split()[1]
    package = json.loads(runner.invoke(app, ["request", "show", rid, "--file", "access.json"]).stdout_bytes)
    assert today.isoformat() in json.dumps(package) and "lift_informed_on" in json.dumps(package)


def _half_done_rectification(env, monkeypatch, status: int | None) -> tuple[uuid.UUID, uuid.UUID]:
    """Bert subscribed and synced, then his address rectified to bert.neu@: CleverReach
    applies the new address, but its answer is lost (`status`: the failure's), so the
    rectification stays open, ours keeps the old address, CleverReach holds the new one.
    Returns (subject id, rectification request id)."""
    from connectors.transport import RetriableError
    from flows import rights

    _, base = env
    take_in(base, *consent_lines("bert@example.de"))
    newsletter.sync_newsletter_consents()
    sid = subject_id("bert@example.de")
    with transaction() as session:
        rectification = rights.open_request(
            session, right="rectification", subject_id=sid, channel="letter", changes={"email": "bert.neu@example.de"}
        ).id
    update = CleverReachAmender.update

    def applied_but_answer_lost(self, client, holder, changes):
        update(self, client, holder, changes)
        raise RetriableError("cleverreach", "receivers.update", status, reason="connection dropped")

    with monkeypatch.context() as patched:
        patched.setattr(CleverReachAmender, "update", applied_but_answer_lost)
        assert rights.handle([rectification])["still_open"] == 1
    return sid, rectification


def test_a_half_done_rectification_holds_pushes_and_an_objection_meanwhile_ends_right_at_cleverreach(env, monkeypatch):
    from flows import rights
    from models.recipients import Recipient

    url, base = env
    sid, rectification = _half_done_rectification(env, monkeypatch, None)
    there = receiver(url, "1001", "bert.neu@example.de")
    assert there is not None and receiver(url, "1001", "bert@example.de") is None
    with transaction() as session:
        assert session.get(DataSubject, sid).email == "bert@example.de"
        row = session.exec(select(Recipient).where(Recipient.processor == "cleverreach")).one()
        assert row.external_id == str(there["id"])  # kept on the rectification path

    # Meanwhile the sync holds the person: nothing is pushed under our (old) address.
    take_in(base, *consent_lines("bert@example.de", "service_offers", insurance_number="A123456780"))
    assert newsletter.sync_newsletter_consents().get("held_restricted") == 1
    assert sandbox_state(url)["cleverreach"]["groups"]["1002"]["receivers"] == {}
    with transaction() as session:
        held = session.exec(select(RestrictionHold)).one()
        assert held.subject_id == sid and held.released_at is None
        assert ("sync-newsletter-consents:service_offers.restriction", "held") in {
            (e.action, e.outcome) for e in session.exec(select(AuditEntry))
        }

    # The objection arrives: the receiver is removed by its id, not looked for under ours.
    with transaction() as session:
        objection = rights.open_request(session, right="objection", subject_id=sid, channel="portal").id
    assert rights.handle([objection])["completed"] == 1
    groups = sandbox_state(url)["cleverreach"]["groups"]
    assert groups["1001"]["receivers"] == {} and groups["1002"]["receivers"] == {}

    # The rectification's follow-up completes here; CleverReach stays empty, and what was
    # held goes to the retry queue (a withdrawn consent now: nothing is pushed).
    assert rights.handle([rectification])["completed"] == 1
    with transaction() as session:
        assert session.get(DataSubject, sid).email == "bert.neu@example.de"
        assert session.exec(select(RestrictionHold)).one().released_at is not None
    newsletter.sync_newsletter_consents()
    groups = sandbox_state(url)["cleverreach"]["groups"]
    assert groups["1001"]["receivers"] == {} and groups["1002"]["receivers"] == {}
    with transaction() as session:
        assert verify(session, KEY).ok


def test_what_a_rectification_held_goes_once_it_completes(env, monkeypatch):
    from connectors.transport import FatalError
    from flows import rights

    url, base = env
    take_in(base, *consent_lines("carla@example.de"))
    newsletter.sync_newsletter_consents()
    sid = subject_id("carla@example.de")
    with transaction() as session:
        rectification = rights.open_request(
            session, right="rectification", subject_id=sid, channel="letter", changes={"last_name": "Neumann"}
        ).id
    with monkeypatch.context() as patched:
        patched.setattr(
            CleverReachAmender,
            "update",
            lambda self, client, holder, changes: (_ for _ in ()).throw(
                FatalError("cleverreach", "receivers.update", 422)
            ),
        )
        assert rights.handle([rectification])["still_open"] == 1
    take_in(base, *consent_lines("carla@example.de", "service_offers", insurance_number="A123456780"))
    assert newsletter.sync_newsletter_consents().get("held_restricted") == 1
    assert sandbox_state(url)["cleverreach"]["groups"]["1002"]["receivers"] == {}

    assert rights.handle([rectification])["completed"] == 1
    assert newsletter.sync_newsletter_consents().get("pushed") == 1
    pushed = receiver(url, "1002", "carla@example.de")
    assert pushed is not None and pushed["global_attributes"]["lastname"] == "Neumann"


def test_an_erasure_during_a_half_done_rectification_ends_right_at_cleverreach(env, monkeypatch):
    from flows import erasure, rights

    url, _ = env
    _, rectification = _half_done_rectification(env, monkeypatch, 503)
    assert receiver(url, "1001", "bert.neu@example.de") is not None

    # Asked for by our (old) address; CleverReach is asked by the receiver's id.
    counts = erasure.fan_out_erasure(email="bert@example.de", channel="letter")
    assert counts.get("verified") == 1, counts
    assert sandbox_state(url)["cleverreach"]["groups"]["1001"]["receivers"] == {}
    rights.handle([rectification])  # its follow-up sends nothing there again
    assert sandbox_state(url)["cleverreach"]["groups"]["1001"]["receivers"] == {}
