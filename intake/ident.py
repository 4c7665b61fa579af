"""Intake of what a processor got from the person directly: an identification case at Nect
(``ident.case``, seed 002) and a call note the phone secretary took (``call.note``, seed 004).

Both lines only tell the recipient register that a processor holds something of this
person's, under one purpose per case or note, so that the erasure fan-out asks there (Nect
through its API, Emilie by letter) and an access request names it. Nothing else of the
line is kept.

``ident.case``: the portal opened an identification case at Nect.

The portal starts the identification itself (the person is redirected to Nect at once) and
sends Nect nothing but our pseudonymous id (seed 002, 5.4.2). It hands the case over here so
the recipient register knows that Nect holds this person's identification, and the erasure
fan-out finds the case and deletes it there. One register row per case (purpose
``ident:<case>``), so a second identification is erased too.

``call.note``: Telefonsekretariat Emilie took a call for us and sent us the note (name, phone
number, message: seed 004). The note's content stays where it arrived; the line carries our
reference for it and the caller's e-mail address (how the person is found here). Emilie
deletes contact data when the conversation ends (catalogue rule R11); an erasure request
still goes to Emilie by letter, since "may hold" counts as "holds".

A case or note of a person whose data was erased is registered all the same (the processor
holds it, so an erasure must find it), under the pseudonym only: the line brings none of
their data back.
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

    def held(self) -> tuple[str, str, str | None]:
        """(processor, register purpose, the processor's id for it)."""
        return PROCESSOR, purpose(self.case_id), str(self.case_id)

    def ref(self) -> str:
        """What makes the line unique (its receipt's key)."""
        return str(self.case_id)


class CallNote(EventBase):
    """A call the phone secretary (Telefonsekretariat Emilie) took for us from this person."""

    type: Literal["call.note"]
    email: Email
    insurance_number: InsuranceNumber | None = None
    note_id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,59}$",
        description="our reference for the call note (letters, digits, . _ -), never the caller's data",
    )

    def held(self) -> tuple[str, str, str | None]:
        """(processor, register purpose, the processor's id for it: none, Emilie has no API)."""
        return "emilie", f"call:{self.note_id}", None

    def ref(self) -> str:
        """What makes the line unique (its receipt's key)."""
        return self.note_id


def purpose(case_id: uuid.UUID) -> str:
    """The register purpose of one case.

    >>> purpose(uuid.UUID(int=1))
    'ident:00000000-0000-0000-0000-000000000001'
    """
    return f"ident:{case_id}"


class HeldStore:
    """Registers the cases and notes of one chunk; a receipt per line makes a repeat a
    duplicate."""

    def __init__(self, session: Session, key: bytes, subjects: SubjectIndex):
        self.session, self.key, self.subjects = session, key, subjects
        self.keys: dict[int, str] = {}
        self.seen: set[str] = set()

    def begin_chunk(self, events: Iterable[IdentCase | CallNote]) -> None:
        self.keys = {id(e): event_key(self.key, e.type, e.ref()) for e in events}
        self.seen = seen(self.session, self.keys.values())

    def apply(self, event: IdentCase | CallNote) -> Applied:
        """Register the case or note at its processor for its subject; the outcome and the
        audit event."""
        key = self.keys[id(event)]
        if key in self.seen:
            return Applied("duplicate")
        subject = self.subjects.find(event.email, event.insurance_number, event.at)
        detail = "via=intake"
        if subject is None:
            subject = self.subjects.create(event.email, event.insurance_number)
        elif subject.erased_at is None:
            self.subjects.identify(subject, event.email, event.insurance_number)
        else:
            detail += " subject=erased"  # registered under the pseudonym; nothing restored
        self.subjects.write()  # a new subject must be in the database before the register row
        processor, where, external_id = event.held()
        record_sent_many(self.session, processor, where, {subject.id: external_id}, event.at)
        self.seen.add(key)
        self.session.add(IntakeReceipt(dedupe_key=key, kind=event.type, received_at=event.at))
        return Applied(
            "stored",
            AuditEvent(
                event.type,
                "registered",
                processor=processor,
                subject=subject.pseudonym,
                detail=detail,
            ),
        )

    def end_chunk(self) -> None:
        self.session.flush()
