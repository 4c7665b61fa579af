"""Intake of erasure requests (``erasure.request``): the portal's "delete my data" button.

The line opens the request (or joins the subject's open one); ``follow-up-erasures`` fans
it out on its next run. A subject not known yet is tried again after the file's other lines
(its sign-up may be further down, ``NotYetKnown``); still unknown then, the line is rejected
with a clear reason, as from the CLI.
A request for a person already erased is opened all the same (found by the pseudonym of the
address; the request and its answer are kept, and nothing of the person is restored): the
follow-up finds nothing left and completes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import Field, model_validator
from sqlmodel import Session

from intake.receipts import ignored
from intake.types import Applied, Email, EventBase, InsuranceNumber, NotYetKnown, PlausibleTime
from models.audit import AuditEvent
from models.erasure import UnknownSubject, open_request
from models.receipts import IntakeReceipt, seen
from models.rights import Superseded
from models.subjects import DataSubject
from models.types import event_key


class ErasureRejected(ValueError):
    """The request cannot be opened; the reason is safe to show."""


class UnknownErasureSubject(ErasureRejected, NotYetKnown):
    """Nobody matches the request's identifiers (yet)."""


class ErasureRequestEvent(EventBase):
    """A data subject asked for erasure (Art. 17 GDPR)."""

    type: Literal["erasure.request"]
    email: Email | None = None
    insurance_number: InsuranceNumber | None = None
    received_at: PlausibleTime | None = Field(default=None, description="default: at")
    channel: Literal["letter", "email", "portal", "phone"] = "portal"
    reference: str = Field(default="", max_length=200, description="no personal data")

    @model_validator(mode="after")
    def _identified(self) -> ErasureRequestEvent:
        if not self.email and not self.insurance_number:
            raise ValueError("give email or insurance_number")
        return self


class RequestStore:
    """Opens the requests of one chunk; a receipt per line makes a repeat a duplicate.

    A subclass names its audit `action`, the `rejected` error and its `unknown` kind (nobody
    matches: tried again after the file), and opens one request (``open``: the request, the
    audit outcome, and what the audit detail adds).
    """

    action: str
    rejected: type[ValueError]
    unknown: type[ValueError]

    def __init__(self, session: Session, key: bytes):
        self.session, self.key = session, key
        self.keys: dict[int, str] = {}
        self.seen: set[str] = set()

    def begin_chunk(self, events: Iterable[Any]) -> None:
        self.keys = {id(e): event_key(self.key, e.model_dump_json()) for e in events}
        self.seen = seen(self.session, self.keys.values())

    def open(self, event: Any) -> tuple[Any, str, str]:
        raise NotImplementedError

    def apply(self, event: Any) -> Applied:
        """Open the request; the outcome and the audit event. Raises ``rejected``."""
        key = self.keys[id(event)]
        if key in self.seen:
            return Applied("duplicate")
        try:
            request, outcome, detail = self.open(event)
        except Superseded as exc:  # recorded, so importing it again is a duplicate
            self.seen.add(key)
            self.session.add(IntakeReceipt(dedupe_key=key, kind=event.type, received_at=event.at))
            return ignored(event.type, "stale", str(exc), exc.pseudonym)
        except UnknownSubject as exc:
            # The person's sign-up, booking or order may come further down the file.
            raise self.unknown(str(exc)) from None
        except (LookupError, ValueError) as exc:
            raise self.rejected(str(exc)) from None
        self.seen.add(key)
        self.session.add(IntakeReceipt(dedupe_key=key, kind=event.type, received_at=event.at))
        pseudonym = self.session.get(DataSubject, request.subject_id).pseudonym  # type: ignore[union-attr]  # the request's subject exists (foreign key)
        return Applied(
            "stored",
            AuditEvent(
                self.action,
                outcome,
                subject=pseudonym,
                detail=f"request={request.id}{detail} channel={event.channel} via=intake due={request.due}",
            ),
        )

    def end_chunk(self) -> None:
        self.session.flush()


class ErasureStore(RequestStore):
    """Opens the erasure requests of one chunk."""

    action, rejected, unknown = "erasure.open", ErasureRejected, UnknownErasureSubject

    def open(self, event: ErasureRequestEvent) -> tuple[Any, str, str]:
        request = open_request(
            self.session,
            email=event.email,
            insurance_number=event.insurance_number,
            received_at=event.received_at or event.at,
            channel=event.channel,
            reference=event.reference,
            key=self.key,
        )
        return request, "opened", ""
