"""Intake of erasure requests (``erasure.request``): the portal's "delete my data" button.

The line opens the request (or joins the subject's open one); ``follow-up-erasures`` fans
it out on its next run. A subject not known yet is tried again after the file's other lines
(its sign-up may be further down, ``NotYetKnown``). Still unknown then, an address is kept
as its pseudonym only, as for a withdrawal from someone unknown, and the request is opened
for it: the person's sign-up, booking or order may still be on its way in a later file or
request, and by event time the erasure is the later decision. The follow-up finds nobody
to ask and completes it; what arrives afterwards dated before the erasure is kept as a
receipt only (``models.subject_index.erased_before``). A request naming only an insurance
number nobody has is rejected with a clear reason, as from the CLI: a number is kept
nowhere in a form a later line could be matched against without keeping the number itself.
A request for a person already erased is opened all the same (found by the pseudonym of the
address; the request and its answer are kept, and nothing of the person is restored): the
follow-up finds nothing left and completes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import Field, model_validator
from sqlmodel import Session

from intake.receipts import ignored
from intake.types import Applied, Email, EventBase, InsuranceNumber, NotYetKnown, PlausibleTime
from models.audit import AuditEvent
from models.erasure import UnknownSubject, check_free_text, open_request
from models.receipts import IntakeReceipt, seen
from models.rights import Superseded
from models.subject_index import SubjectIndex
from models.subjects import DataSubject, Subject
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
    audit outcome, and what the audit detail adds), for the subject its identifiers name or
    for the one given.

    ``deferring`` (intake's first pass): a request naming nobody known raises `unknown`, to
    be tried again after the file's other lines. On the last pass a request that
    ``keeps_unknown`` and names an address is opened for the address's pseudonym only (the
    insurance number is not kept): a later line of the person finds it, and there is nothing
    to erase. A request naming only an insurance number nobody has, or identifiers of which
    one is someone's and another nobody's, is rejected.
    """

    action: str
    rejected: type[ValueError]
    unknown: type[ValueError]
    nobody_known = ""  # the sender is told so, with ``stored``, where a request is kept for nobody

    def __init__(self, session: Session, key: bytes, subjects: SubjectIndex):
        self.session, self.key, self.subjects = session, key, subjects
        self.keys: dict[int, str] = {}
        self.seen: set[str] = set()
        self.deferring = True

    def begin_chunk(self, events: Iterable[Any]) -> None:
        self.keys = {id(e): event_key(self.key, e.model_dump_json()) for e in events}
        self.seen = seen(self.session, self.keys.values())

    def open(self, event: Any, subject_id: uuid.UUID | None = None) -> tuple[Any, str, str]:
        raise NotImplementedError

    def identifiers(self, event: Any, subject_id: uuid.UUID | None) -> dict[str, Any]:
        """How ``open`` names the subject: the one given, or by the line's identifiers."""
        if subject_id is not None:
            return {"subject_id": subject_id}
        return {"email": event.email, "insurance_number": event.insurance_number, "key": self.key}

    def keeps_unknown(self, event: Any) -> bool:
        """Whether a request naming an address nobody has is kept: a decision that an older
        line of the person, arriving later, must not undo (by event time it is the latest),
        or a question owed an answer even when it is "nothing"."""
        return False

    def kept_reason(self, event: Any) -> str:
        """What the sender is told, with ``stored``, of a request kept for nobody."""
        return self.nobody_known

    def _nobody(self, event: Any, unknown: UnknownSubject) -> Subject:
        """The subject holding only the pseudonym of the request's address, made if need be;
        raises `unknown` again where the request is not kept for nobody."""
        if self.deferring or not event.email or not self.keeps_unknown(event):
            raise unknown
        check_free_text(event.reference, "reference")  # refused before anything is made
        subject = self.subjects.find(event.email, event.insurance_number)
        if subject is None:
            subject = self.subjects.create(event.email, None, identified=False)
            self.subjects.write()
        elif subject.email is not None or subject.insurance_number is not None:
            raise unknown  # an identifier is someone's, and another is not on file
        return subject

    def apply(self, event: Any) -> Applied:
        """Open the request; the outcome and the audit event. Raises ``rejected``."""
        key = self.keys[id(event)]
        if key in self.seen:
            return Applied("duplicate")
        reason = ""
        try:
            try:
                request, outcome, detail = self.open(event)
            except UnknownSubject as exc:
                request, outcome, detail = self.open(event, self._nobody(event, exc).id)
                detail, reason = f"{detail} known=no", self.kept_reason(event)
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
            reason=reason,
        )

    def end_chunk(self) -> None:
        self.session.flush()


class ErasureStore(RequestStore):
    """Opens the erasure requests of one chunk; one for an address nobody has is kept."""

    action, rejected, unknown = "erasure.open", ErasureRejected, UnknownErasureSubject
    nobody_known = (
        "nobody is known by this address yet: the request is kept, and what arrives dated before it is erased with it"
    )

    def keeps_unknown(self, event: ErasureRequestEvent) -> bool:
        return True

    def open(self, event: ErasureRequestEvent, subject_id: uuid.UUID | None = None) -> tuple[Any, str, str]:
        request = open_request(
            self.session,
            received_at=event.received_at or event.at,
            channel=event.channel,
            reference=event.reference,
            **self.identifiers(event, subject_id),
        )
        return request, "opened", ""
