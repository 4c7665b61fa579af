"""Intake of data-subject rights requests (``rights.request``): the portal's "what do you hold
about me", "give me my data", "correct my data", "stop processing", "I object" buttons.

The line opens the request (or joins the subject's open one for the same right), exactly
like ``erasure.request``: the same identifiers, receipt time, channel and reference, the same
receipts (a repeat is a duplicate), the same handling of an unknown subject (tried again
after the file). Then an objection, access or portability request naming an address nobody
has is kept for its pseudonym, as an erasure request is (``intake.erasure.RequestStore``):
the objection so a sign-up dated before it stays withdrawn, access and portability so the
person gets the answer "nothing held" in time; a rectification or restriction of nobody's
data is rejected. A
rectification carries its new values in ``changes`` (e-mail, first and last name, phone,
birth date), validated here (email-validator, phonenumbers) and stored only encrypted; the
``follow-up-rights-requests`` flow answers the request on its next run.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import Field, model_validator
from sqlmodel import Session

from intake.erasure import RequestStore
from intake.types import Email, EventBase, InsuranceNumber, NotYetKnown, PlausibleTime
from models.rights import Changes, Right, open_rights_request
from models.subject_index import SubjectIndex

__all__ = ["Changes", "RightsRejected", "RightsRequestEvent", "RightsStore"]

RIGHTS = tuple(r.value for r in Right)


class RightsRejected(ValueError):
    """The request cannot be opened; the reason is safe to show."""


class UnknownRightsSubject(RightsRejected, NotYetKnown):
    """Nobody matches the request's identifiers (yet)."""


class RightsRequestEvent(EventBase):
    """A data subject asked for access, portability, rectification, restriction or objection."""

    type: Literal["rights.request"]
    right: Literal["access", "portability", "rectification", "restriction", "objection"]
    email: Email | None = None
    insurance_number: InsuranceNumber | None = None
    received_at: PlausibleTime | None = Field(default=None, description="default: at")
    channel: Literal["letter", "email", "portal", "phone"] = "portal"
    reference: str = Field(default="", max_length=200, description="no personal data")
    changes: Changes | None = Field(default=None, description="rectification only: the new values")

    @model_validator(mode="after")
    def _identified(self) -> RightsRequestEvent:
        if not self.email and not self.insurance_number:
            raise ValueError("give email or insurance_number")
        if (self.right == Right.rectification) != (self.changes is not None):
            raise ValueError("changes: needed for a rectification and only for it")
        return self


class RightsStore(RequestStore):
    """Opens the rights requests of one chunk (or joins the subject's open one)."""

    action, rejected, unknown = "rights.open", RightsRejected, UnknownRightsSubject
    nobody_known = (
        "nobody is known by this address yet: the objection is kept, and a consent dated before it "
        "that arrives later stays withdrawn"
    )
    # Access and portability are owed an answer even when nothing is held (Art. 15(1): whether
    # data are processed at all; Art. 12(4)), with its deadline: kept, and answered by the
    # follow-up with what is held then, the request itself.
    nobody_asked = "nobody is known by this address yet: the request is kept and answered with what is held"

    def __init__(self, session: Session, key: bytes, subjects: SubjectIndex, document_key: bytes | None):
        super().__init__(session, key, subjects)
        self.document_key = document_key

    def keeps_unknown(self, event: RightsRequestEvent) -> bool:
        # An objection is a decision a sign-up dated before it must not undo when it arrives
        # later; access and portability are questions owed an answer. A correction or a
        # restriction of nobody's data has no object (and a correction's new values would be
        # kept for nobody): rejected, the sender tells the person.
        return event.right in (Right.objection, Right.access, Right.portability)

    def kept_reason(self, event: RightsRequestEvent) -> str:
        return self.nobody_known if event.right == Right.objection else self.nobody_asked

    def open(self, event: RightsRequestEvent, subject_id: uuid.UUID | None = None) -> tuple[Any, str, str]:
        request, opened = open_rights_request(
            self.session,
            right=event.right,
            received_at=event.received_at or event.at,
            channel=event.channel,
            reference=event.reference,
            changes=event.changes.values() if event.changes else None,
            document_key=self.document_key,
            **self.identifiers(event, subject_id),
        )
        return request, "opened" if opened else "joined", f" right={request.right}"
