"""The scene of the erasure and rights tests: people known at every processor (CleverReach,
TIMIFY, Flexperto with chat archives, the ISIC issuer, Nect), set up through intake and the
flows as in production. Apart from support.py, which the subprocess helpers import without
the flows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

import requests
from cryptography.fernet import Fernet
from sqlmodel import select

from connectors import cleverreach, nect
from core.settings import get_settings
from flows import bookings, student_id
from flows.intake import intake_lines
from models.db import transaction
from models.recipients import record_sent_many
from models.subjects import DataSubject
from models.types import utcnow
from psync.sandbox_env import SERVICE_POINTS

from support import JPEG_BYTES, PDF_BYTES, PNG_BYTES, TEST_KEY, sandbox_state  # noqa: F401

KEY = TEST_KEY.encode()
DOC_KEY = Fernet.generate_key().decode()


@dataclass(frozen=True)
class Person:
    tag: str
    email: str
    first: str
    last: str
    phone: str
    iban: str
    birth: str
    ip: str

    @property
    def order(self) -> str:
        return f"ISIC-{self.tag}"

    @property
    def video(self) -> str:
        return f"B-{self.tag}-video"

    def markers(self) -> list[str]:
        """Strings that are this person's data and nobody else's."""
        return [self.email, self.first, self.last, self.phone[-7:], self.iban, self.birth, self.ip]


ANNA = Person(
    "anna",
    "anna.loeschmann@example.de",
    "Annegret",
    "Loeschmann",
    "+49 170 5550101",
    "DE02120300000000202051",
    "2004-02-29",
    "192.0.2.11",
)
BERT = Person(
    "bert",
    "bert.bleibtreu@example.de",
    "Bertholda",
    "Bleibtreu",
    "+49 170 5550202",
    "DE89370400440532013000",
    "2003-07-14",
    "192.0.2.22",
)


def lines_of(p: Person) -> list[str]:
    at = (utcnow() - timedelta(hours=3)).isoformat()
    name = {"first_name": p.first, "last_name": p.last}
    return [
        json.dumps(e)
        for e in (
            {
                "type": "consent.signup",
                "list": "newsletter",
                "email": p.email,
                "salutation": "Frau",
                **name,
                "ip": p.ip,
                "at": at,
                "source": "https://example.de/nl",
                "policy_version": "2026-01",
            },
            {
                "type": "consent.confirm",
                "list": "newsletter",
                "email": p.email,
                "ip": "198.51.100.7",
                "at": (utcnow() - timedelta(hours=2)).isoformat(),
            },
            {
                "type": "booking.request",
                "booking_id": f"B-{p.tag}-branch",
                "channel": "branch",
                "service_point": "sp-berlin",
                "start": "2027-02-02T10:00:00+01:00",
                "duration_minutes": 30,
                "salutation": "Frau",
                **name,
                "phone": p.phone,
                "email": p.email,
                "birth_date": p.birth,
                "concern": "Krankengeld",
                "at": at,
            },
            {
                "type": "booking.request",
                "booking_id": p.video,
                "channel": "video",
                "start": "2027-02-03T14:05:00+01:00",
                "duration_minutes": 30,
                "salutation": "Frau",
                **name,
                "phone": p.phone,
                "email": p.email,
                "birth_date": p.birth,
                "at": at,
            },
            {
                "type": "isic.order",
                "order_id": p.order,
                **name,
                "birth_date": p.birth,
                "email": p.email,
                "postal_code": "10115",
                "iban": p.iban,
                "institution": "TU Berlin",
                "phone_password": "Sonnenblume7",
                "at": at,
                "documents": {"student_proof": "nachweis.pdf", "id_copy": "ausweis.png", "photo": "foto.jpg"},
            },
        )
    ]


def take_in(base, *lines: str) -> None:
    with transaction() as session:
        results = intake_lines(
            session,
            KEY,
            lines,
            now=utcnow(),
            service_points=SERVICE_POINTS,
            base_dir=base,
            document_key=DOC_KEY.encode(),
        )
    assert {r.outcome for r in results} <= {"stored"}, results


def subject_of(p: Person) -> DataSubject:
    with transaction() as session:
        subject = session.exec(select(DataSubject).where(DataSubject.email == p.email)).one()
        session.expunge(subject)
        return subject


def push_newsletter(p: Person) -> None:
    """What sync-newsletter-consents does for one confirmed subscriber, without its batching."""
    settings = get_settings()
    subject = subject_of(p)
    client = cleverreach.from_settings(settings)
    receiver = {
        "email": p.email,
        "source": "https://example.de/nl",
        "global_attributes": {"salutation": "Frau", "firstname": p.first, "lastname": p.last},
    }
    [answer] = client.upsert(settings.cleverreach.group_newsletter, "newsletter", [receiver])
    with transaction() as session:
        record_sent_many(session, "cleverreach", "consent:newsletter", {subject.id: str(answer["id"])}, utcnow())


def open_nect_case(p: Person) -> str:
    """What the portal does: open a case at Nect with our pseudonym only, then hand the
    case over as an ``ident.case`` intake line."""
    subject = subject_of(p)
    case = nect.from_settings(get_settings()).open_case(subject.pseudonym)
    line = json.dumps({"type": "ident.case", "email": p.email, "case_id": case, "at": utcnow().isoformat()})
    with transaction() as session:
        [result] = intake_lines(session, get_settings().hmac_key(), [line], now=utcnow())
    assert result.outcome == "stored", result.reason
    return case


def everywhere(url, base, *people: Person, issue: bool = True) -> None:
    """Each person at CleverReach, TIMIFY, Flexperto (with chat archives), the ISIC issuer
    (card issued, so no order is in progress) and Nect."""
    take_in(base, *[line for p in people for line in lines_of(p)])
    bookings.push_bookings()
    student_id.forward_student_id_orders()
    if issue:
        requests.post(f"{url}/_sandbox/isic/issue", timeout=5).raise_for_status()
        student_id.sync_student_id_order_status()
    for p in people:
        push_newsletter(p)
        open_nect_case(p)
        flex = next(c for c in sandbox_state(url)["flexperto"]["customers"].values() if c["external_id"] == p.video)
        requests.post(f"{url}/_sandbox/flexperto/chats", json={"customer_id": flex["id"]}, timeout=5).raise_for_status()


def held_data(url) -> dict:
    """What the sandbox holds as data (not its request counters and logs)."""
    state = sandbox_state(url)
    return {
        "cleverreach": state["cleverreach"]["groups"],
        "timify": [state["timify"]["customers"], state["timify"]["appointments"]],
        "flexperto": [state["flexperto"]["customers"], state["flexperto"]["archives"]],
        "isic": [state["isic"]["cardholders"], state["isic"]["cards"]],
        "nect": state["nect"]["cases"],
    }
