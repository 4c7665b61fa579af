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
from datetime import date, datetime, timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from sqlmodel import Session

from intake.booking import MAX_AGE_YEARS
from intake.types import _CONTROL, Applied, Email, EventBase, InsuranceNumber, Phone, context_now
from models.audit import AuditEvent
from models.receipts import IntakeReceipt, seen
from models.rights import Right, open_rights_request
from models.subjects import DataSubject
from models.types import BERLIN, event_key

RIGHTS = tuple(r.value for r in Right)


class RightsRejected(ValueError):
    """The request cannot be opened; the reason is safe to show."""


class Changes(BaseModel):
    """A rectification's new values (Art. 16): at least one; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    email: Email | None = None
    first_name: str | None = Field(default=None, min_length=1, max_length=200)
    last_name: str | None = Field(default=None, min_length=1, max_length=200)
    phone: Phone | None = None
    birth_date: date | None = None

    @model_validator(mode="before")
    @classmethod
    def _plain_text(cls, data: Any) -> Any:
        # As EventBase does for a line's own fields: no control characters, no numbers as text.
        if isinstance(data, dict):
            for key, value in data.items():
                if key not in cls.model_fields:
                    continue  # refused as an unknown field
                if isinstance(value, str) and _CONTROL.search(value):
                    raise ValueError(f"{key}: must not contain control characters or bidi overrides")
                if isinstance(value, int | float):
                    raise ValueError(f"{key}: must not be a number or boolean")
        return data

    @field_validator("birth_date")
    @classmethod
    def _plausible_birth_date(cls, value: date | None, info: ValidationInfo) -> date | None:
        if value is None:
            return value
        today = (context_now(info) or datetime.now(BERLIN)).astimezone(BERLIN).date()
        if not today - timedelta(days=365 * MAX_AGE_YEARS) < value < today:
            raise ValueError("is not a plausible birth date")
        return value

    @model_validator(mode="after")
    def _some(self) -> Changes:
        if not self.values():
            raise ValueError("give at least one new value")
        return self

    def values(self) -> dict[str, Any]:
        """The new values given (names as ``models.rights.CHANGE_FIELDS``)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


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
