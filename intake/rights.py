"""Intake of data-subject rights requests (``rights.request``): the portal's "what do you hold
about me", "give me my data", "correct my data", "stop processing", "I object" buttons.

The line opens the request (or joins the subject's open one for the same right), exactly
like ``erasure.request``: the same identifiers, receipt time, channel and reference, the same
receipts (a repeat is a duplicate), the same rejection of an unknown subject. A
rectification carries its new values in ``changes`` (e-mail, first and last name, phone,
birth date), validated here (email-validator, phonenumbers) and stored only encrypted; the
``follow-up-rights-requests`` flow answers the request on its next run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import AwareDatetime, Field, model_validator
from sqlmodel import Session

from intake.types import Applied, Email, EventBase, InsuranceNumber
from models.audit import AuditEvent
from models.receipts import IntakeReceipt, seen
from models.rights import Changes, Right, open_rights_request
from models.subjects import DataSubject
from models.types import event_key

__all__ = ["Changes", "RightsRejected", "RightsRequestEvent", "RightsStore"]

RIGHTS = tuple(r.value for r in Right)


class RightsRejected(ValueError):
    """The request cannot be opened; the reason is safe to show."""


class RightsRequestEvent(EventBase):
    """A data subject asked for access, portability, rectification, restriction or objection."""

    type: Literal["rights.request"]
    right: Literal["access", "portability", "rectification", "restriction", "objection"]
    email: Email | None = None
    insurance_number: InsuranceNumber | None = None
    received_at: AwareDatetime | None = Field(default=None, description="default: at")
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


class RightsStore:
    """Opens the requests of one chunk; a receipt per line makes a repeat a duplicate."""

    def __init__(self, session: Session, key: bytes, document_key: bytes | None):
        self.session, self.key, self.document_key = session, key, document_key
        self.keys: dict[int, str] = {}
        self.seen: set[str] = set()

    def begin_chunk(self, events: Iterable[RightsRequestEvent]) -> None:
        self.keys = {id(e): event_key(self.key, e.model_dump_json()) for e in events}
        self.seen = seen(self.session, self.keys.values())

    def apply(self, event: RightsRequestEvent) -> Applied:
        """Open the request; the outcome and the audit event. Raises RightsRejected."""
        key = self.keys[id(event)]
        if key in self.seen:
            return Applied("duplicate")
        try:
            request, opened = open_rights_request(
                self.session,
                right=event.right,
                email=event.email,
                insurance_number=event.insurance_number,
                received_at=event.received_at or event.at,
                channel=event.channel,
                reference=event.reference,
                changes=event.changes.values() if event.changes else None,
                document_key=self.document_key,
                key=self.key,
            )
        except (LookupError, ValueError) as exc:
            raise RightsRejected(str(exc)) from None
        self.seen.add(key)
        self.session.add(IntakeReceipt(dedupe_key=key, kind=event.type, received_at=event.at))
        pseudonym = self.session.get(DataSubject, request.subject_id).pseudonym  # type: ignore[union-attr]  # the request's subject exists (foreign key)
        return Applied(
            "stored",
            AuditEvent(
                "rights.open",
                "opened" if opened else "joined",
                subject=pseudonym,
                detail=f"request={request.id} right={request.right} channel={event.channel} via=intake due={request.due}",
            ),
        )

    def end_chunk(self) -> None:
        self.session.flush()
