"""Intake of consent events (seed 000): sign-up, confirm, withdraw, for each list.

Storing is idempotent: every event has a keyed content hash (``ConsentEvent.dedupe_key``),
and a line seen before is a duplicate.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

from pydantic import Field, model_validator
from sqlalchemy import insert
from sqlmodel import Session, select

from models.audit import AuditEvent
from models.consent import (
    ConsentEvent,
    ConsentList,
    ConsentRecord,
    ConsentState,
    apply_confirm,
    apply_signup,
    apply_withdraw,
    event_key,
)
from models.cursors import next_seq
from models.intake_types import Email, EventBase, InsuranceNumber
from models.subject_index import SubjectIndex


class _ConsentEvent(EventBase):
    list_name: ConsentList = Field(alias="list")
    email: Email


class ConsentSignup(_ConsentEvent):
    """A double-opt-in sign-up; the website has sent the confirmation mail."""

    type: Literal["consent.signup"]
    salutation: str | None = Field(default=None, max_length=40)
    first_name: str = Field(min_length=1, max_length=200)
    last_name: str = Field(min_length=1, max_length=200)
    insurance_number: InsuranceNumber | None = None
    ip: IPv4Address | IPv6Address
    source: str = Field(min_length=1, max_length=500)
    policy_version: str = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _insurance_number_fits_list(self) -> ConsentSignup:
        # Seed 000: the service-offers list is linked to the CRM by the insurance number;
        # the newsletter list is not, so it must not even be collected there.
        if self.list_name == ConsentList.service_offers and not self.insurance_number:
            raise ValueError("insurance_number is required for the service_offers list")
        if self.list_name == ConsentList.newsletter and self.insurance_number:
            raise ValueError("insurance_number is not collected for the newsletter list")
        return self


class ConsentConfirm(_ConsentEvent):
    """The confirmation link in the double-opt-in mail was clicked."""

    type: Literal["consent.confirm"]
    ip: IPv4Address | IPv6Address


class ConsentWithdraw(_ConsentEvent):
    """Consent withdrawn by e-mail to the controller or in the portal."""

    type: Literal["consent.withdraw"]
    channel: Literal["email", "portal"]


ConsentIntakeEvent = ConsentSignup | ConsentConfirm | ConsentWithdraw


class ConsentStore:
    """Applies consent events of one chunk; records and dedupe keys are fetched up front."""

    def __init__(self, session: Session, key: bytes, subjects: SubjectIndex):
        self.session, self.key, self.subjects = session, key, subjects
        self.consents: dict[tuple[uuid.UUID, str], ConsentRecord] = {}
        self.events: list[ConsentEvent] = []
        self.seen: set[str] = set()
        self.keys: dict[int, str] = {}
        self.seq = 0

    def begin_chunk(self, events: Iterable[ConsentIntakeEvent], found_ids: set[uuid.UUID]) -> None:
        events = list(events)
        self.keys = {id(e): event_key(self.key, e.model_dump_json(by_alias=True)) for e in events}
        self.seen = set(
            self.session.exec(
                select(ConsentEvent.dedupe_key).where(
                    ConsentEvent.dedupe_key.in_(list(self.keys.values()))  # type: ignore[attr-defined]
                )
            )
        )
        if found_ids:
            for record in self.session.exec(
                select(ConsentRecord).where(ConsentRecord.subject_id.in_(found_ids))  # type: ignore[attr-defined]
            ):
                self.consents[(record.subject_id, record.list_name)] = record
        self.seq = next_seq(self.session, "consent", len(events)) if events else 0

    def apply(self, event: ConsentIntakeEvent) -> tuple[str, AuditEvent | None]:
        """Returns the line's outcome and its audit event; raises TransitionError to reject."""
        key = self.keys[id(event)]
        seq, self.seq = self.seq, self.seq + 1
        if key in self.seen:
            return "duplicate", None
        kvnr = getattr(event, "insurance_number", None)
        subject = self.subjects.resolve(event.email, kvnr, create=isinstance(event, ConsentSignup))
        record = self.consents.get((subject.id, event.list_name)) if subject else None
        if isinstance(event, ConsentSignup):
            assert subject is not None
            if record is None:
                record = ConsentRecord(
                    subject_id=subject.id, list_name=event.list_name,
                    state=ConsentState.pending, signup_at=event.at,
                )  # fmt: skip
                self.session.add(record)
                self.consents[(subject.id, event.list_name)] = record
            stored = apply_signup(
                record, event.at, str(event.ip), event.source, event.policy_version, seq, key
            )
            if stored is not None:
                subject.salutation = event.salutation
                subject.first_name, subject.last_name = event.first_name, event.last_name
        elif isinstance(event, ConsentConfirm):
            stored = apply_confirm(record, event.at, str(event.ip), seq, key)
        else:
            if record is None:
                self.seen.add(key)
                return "unchanged", None
            stored = apply_withdraw(record, event.at, event.channel, seq, key)
        # Only an applied line makes a later identical one a duplicate.
        self.seen.add(key)
        if stored is None:
            return "unchanged", None
        self.events.append(stored)
        audit = AuditEvent(
            f"consent.{stored.kind}", "recorded", subject=subject.pseudonym,
            detail=f"list={event.list_name}",
        )  # fmt: skip
        return "stored", audit

    def end_chunk(self) -> None:
        # Events go in with one INSERT after their records are flushed (no ORM relationship
        # orders them, and one statement per chunk is much faster than one per event).
        self.session.flush()
        if self.events:
            # render_nulls: rows with different None fields would otherwise each get an INSERT.
            self.session.execute(
                insert(ConsentEvent).execution_options(render_nulls=True),
                [e.model_dump(exclude={"id"}) for e in self.events],
            )
            self.events.clear()
