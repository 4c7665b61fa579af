"""Intake of identification cases (``ident.case``): the portal opened one at Nect (seed 002).

The portal starts the identification itself (the person is redirected to Nect at once) and
sends Nect nothing but our pseudonymous id (seed 002, 5.4.2). It hands the case over here so
the recipient register knows that Nect holds this person's identification, and the erasure
fan-out finds the case and deletes it there. One register row per case (purpose
``ident:<case>``), so a second identification is erased too.

A case for a person whose data was erased is registered all the same (Nect holds it, so an
erasure must find it), under the pseudonym only: the line brings none of their data back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Literal

from pydantic import Field
from sqlmodel import Session

from intake.types import Applied, Email, EventBase, InsuranceNumber
from models.audit import AuditEvent
from models.receipts import IntakeReceipt, seen
from models.recipients import record_sent_many
from models.subject_index import SubjectIndex
from models.types import event_key

PROCESSOR = "nect"


class IdentCase(EventBase):
    """An identification case the portal opened at Nect for this person."""

    type: Literal["ident.case"]
    email: Email
    insurance_number: InsuranceNumber | None = None
    case_id: uuid.UUID = Field(description="Nect's caseUuid")


def purpose(case_id: uuid.UUID) -> str:
    """The register purpose of one case.

    >>> purpose(uuid.UUID(int=1))
    'ident:00000000-0000-0000-0000-000000000001'
    """
    return f"ident:{case_id}"


class IdentStore:
    """Registers the cases of one chunk; a receipt per line makes a repeat a duplicate."""

    def __init__(self, session: Session, key: bytes, subjects: SubjectIndex):
        self.session, self.key, self.subjects = session, key, subjects
        self.keys: dict[int, str] = {}
        self.seen: set[str] = set()

    def begin_chunk(self, events: Iterable[IdentCase]) -> None:
        self.keys = {id(e): event_key(self.key, "ident.case", e.case_id) for e in events}
        self.seen = seen(self.session, self.keys.values())

    def apply(self, event: IdentCase) -> Applied:
        """Register the case at Nect for its subject; the outcome and the audit event."""
        key = self.keys[id(event)]
        if key in self.seen:
            return Applied("duplicate")
        subject = self.subjects.find(event.email, event.insurance_number)
        detail = "via=intake"
        if subject is None:
            subject = self.subjects.create(event.email, event.insurance_number)
        elif subject.erased_at is None:
            self.subjects.identify(subject, event.email, event.insurance_number)
        else:
            detail += " subject=erased"  # registered under the pseudonym; nothing restored
        self.session.flush()  # a new subject needs its id before the register row
        record_sent_many(self.session, PROCESSOR, purpose(event.case_id), {subject.id: str(event.case_id)}, event.at)
        self.seen.add(key)
        self.session.add(IntakeReceipt(dedupe_key=key, kind=event.type, received_at=event.at))
        return Applied(
            "stored",
            AuditEvent(
                "ident.case",
                "registered",
                processor=PROCESSOR,
                subject=subject.pseudonym,
                detail=detail,
            ),
        )

    def end_chunk(self) -> None:
        self.session.flush()
