"""How each processor erases a subject's data and how we know it did (Art. 17, 19 GDPR).

A handler per processor, registered by the processor's name as the recipient register
spells it (``HANDLERS``):

- ``erase(ctx, task)`` asks the processor to erase and returns ``VERIFIED`` when the data
  already reads back as absent, ``AWAITING`` when the processor accepted an asynchronous
  deletion (202); raises ``NotVerified`` when a synchronous deletion does not read back as
  absent (the next run asks again), or a ``ProcessorError`` from the connector;
- ``verify(ctx, task)`` reads back: True only when the processor no longer holds it;
- ``hold(session, task)`` (optional) names a retention duty that applies right now.

Handlers are plain objects without state; the HTTP layer brings the retry policy, the
rate limit and the call log. They never hold a database transaction across a call (SQLite
has one writer, and every processor runs in its own thread): what they need from the
database they read with ``ctx.read``.

A processor without a handler, or configured as manual, gets a manual task: a person sends
``manual_request_text`` and confirms the erasure with evidence.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlmodel import Session, col, select

from connectors import cleverreach, flexperto, isic, nect, timify
from connectors.transport import CallRecord
from models.bookings import Booking
from models.db import transaction
from models.erasure import ErasureRequest, ErasureTask
from models.isic import IsicOrder, OrderStatus
from models.subjects import DataSubject

VERIFIED, AWAITING = "verified", "awaiting"
T = TypeVar("T")


class NotVerified(Exception):
    """A synchronous deletion was sent but the data still reads back. Names no data."""


# what a handler sees --------------------------------------------------------------------
@dataclass(frozen=True)
class SubjectRef:
    """The subject as a handler needs it; the e-mail only for processors keyed by it."""

    id: uuid.UUID
    pseudonym: str
    email: str | None

    @classmethod
    def of(cls, subject: DataSubject) -> SubjectRef:
        return cls(subject.id, subject.pseudonym, subject.email)


@dataclass(frozen=True)
class TaskRef:
    """A snapshot of an ErasureTask, safe to hand to another thread."""

    id: uuid.UUID
    request_id: uuid.UUID
    processor: str
    purpose: str
    external_id: str | None
    state: str
    requested_at: datetime | None

    @classmethod
    def of(cls, task: ErasureTask) -> TaskRef:
        return cls(
            task.id, task.request_id, task.processor, task.purpose, task.external_id, task.state, task.requested_at
        )

    def purpose_arg(self, prefix: str) -> str:
        """The part of the purpose after `prefix` ("video:B-1" → "B-1"); ValueError if absent."""
        if not self.purpose.startswith(prefix) or len(self.purpose) == len(prefix):
            raise ValueError(f"purpose of a {self.processor} task must start with {prefix!r}")
        return self.purpose[len(prefix) :]


# configuration --------------------------------------------------------------------------
@dataclass(frozen=True)
class Hold:
    reason: str
    days: int


@dataclass(frozen=True)
class Policy:
    """Holds, manual processors and timings; ``policy_from_settings`` reads them.

    `holds` maps "processor" or "processor:purpose-prefix" to a Hold (the longest match
    wins); `manual` maps a processor to whom the request goes (an organisation, not a
    person's data). A hold a handler finds itself (an ISIC order in progress) is looked at
    again after `hold_recheck_days`.
    """

    holds: Mapping[str, Hold] = field(default_factory=dict)
    manual: Mapping[str, str] = field(default_factory=dict)
    hold_recheck_days: int = 7
    lease: timedelta = timedelta(minutes=15)
    # An accepted (202) deletion still not done after this long is asked for again.
    reissue_after: timedelta = timedelta(days=7)

    def configured_hold(self, task: ErasureTask | TaskRef) -> Hold | None:
        best: tuple[int, Hold] | None = None
        for key, hold in self.holds.items():
            processor, _, prefix = key.partition(":")
            if processor == task.processor and task.purpose.startswith(prefix):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), hold)
        return best[1] if best else None


def policy_from_settings(settings: Any) -> Policy:
    """The policy from the settings, where they carry it; defaults otherwise.

    Reads ``erasure_holds`` ({"timify:booking": {"reason": "...", "days": 30}}),
    ``erasure_manual_processors`` ({"printshop": "Druckerei Beispiel GmbH"}),
    ``erasure_hold_recheck_days``, ``erasure_claim_minutes`` and ``erasure_reissue_days``.
    """
    holds = {
        key: value if isinstance(value, Hold) else Hold(str(value["reason"]), int(value["days"]))
        for key, value in settings.erasure_holds.items()
    }
    return Policy(
        holds=holds,
        manual=dict(settings.erasure_manual_processors),
        hold_recheck_days=settings.erasure_hold_recheck_days,
        lease=timedelta(minutes=settings.erasure_claim_minutes),
        reissue_after=timedelta(days=settings.erasure_reissue_days),
    )


# connectors -----------------------------------------------------------------------------
CONNECTORS: Mapping[str, Callable[[Any], Any]] = {
    cleverreach.PROCESSOR: cleverreach.from_settings,
    timify.PROCESSOR: timify.from_settings,
    flexperto.PROCESSOR: flexperto.from_settings,
    isic.PROCESSOR: isic.from_settings,
    nect.PROCESSOR: nect.from_settings,
}


class Clients:
    """The run's connectors, each built on first use (a run may need only some)."""

    def __init__(self, settings: Any):
        self.settings = settings
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, processor: str) -> Any:
        with self._lock:
            client = self._clients.get(processor)
            if client is None:
                client = self._clients[processor] = CONNECTORS[processor](self.settings)
            return client

    def drain_calls(self, processor: str) -> list[CallRecord]:
        with self._lock:
            client = self._clients.get(processor)
        return client.http.drain_calls() if client is not None else []


@dataclass
class Context:
    """What a handler works with: connectors, the subject, the clock, short reads."""

    settings: Any
    clients: Clients
    subject: SubjectRef
    now: datetime

    def client(self, processor: str) -> Any:
        return self.clients.get(processor)

    def read(self, query: Callable[[Session], T]) -> T:
        """Run `query` in a short transaction of its own (never across an HTTP call)."""
        with transaction() as session:
            return query(session)


class Handler(Protocol):
    processor: str
    asynchronous: bool

    def erase(self, ctx: Context, task: TaskRef) -> str: ...

    def verify(self, ctx: Context, task: TaskRef) -> bool: ...


# handlers -------------------------------------------------------------------------------
class CleverReachHandler:
    """Newsletter and service-offers receivers (purpose ``consent:{list}``).

    Deleted from the list's group by CleverReach's receiver id (by the e-mail address only
    when no id was recorded); verified by reading it back as absent.
    """

    processor = cleverreach.PROCESSOR
    asynchronous = False

    def _group(self, ctx: Context, task: TaskRef) -> str:
        list_name = task.purpose_arg("consent:")
        group = getattr(ctx.settings, f"cleverreach_group_{list_name}", None)
        if not group:
            raise ValueError(f"no CleverReach group configured for list {list_name}")
        return str(group)

    def _target(self, ctx: Context, task: TaskRef) -> str:
        # The receiver id when we have it: an address in a URL travels into access logs.
        target = task.external_id or ctx.subject.email
        if not target:
            raise ValueError("neither a receiver id nor an e-mail address to address it by")
        return target

    def erase(self, ctx: Context, task: TaskRef) -> str:
        client, group = ctx.client(self.processor), self._group(ctx, task)
        client.delete(group, self._target(ctx, task))
        if not self.verify(ctx, task):
            raise NotVerified("receiver still in the group after the delete")
        return VERIFIED

    def verify(self, ctx: Context, task: TaskRef) -> bool:
        client, group = ctx.client(self.processor), self._group(ctx, task)
        return client.get_receiver(group, self._target(ctx, task)) is None


class TimifyHandler:
    """The TIMIFY customer (purpose ``booking``, external id: TIMIFY's customer id).

    The subject's appointments go first (their notes hold the concern of the consultation),
    then the customer; verified by reading customer and appointments back as absent.
    """

    processor = timify.PROCESSOR
    asynchronous = False

    def _appointments(self, ctx: Context) -> list[tuple[str, str | None]]:
        def query(session: Session) -> list[tuple[str, str | None]]:
            rows = session.exec(
                select(Booking.booking_ref, Booking.timify_appointment_id).where(
                    Booking.subject_id == ctx.subject.id,
                    col(Booking.timify_deleted_at).is_(None),
                )
            )
            return [(ref, appointment) for ref, appointment in rows]

        return ctx.read(query)

    def _customer(self, client: timify.Timify, ctx: Context, task: TaskRef) -> dict | None:
        if task.external_id:
            return client.get_customer(task.external_id)
        return client.get_customer(str(ctx.subject.id), external=True)

    def erase(self, ctx: Context, task: TaskRef) -> str:
        client: timify.Timify = ctx.client(self.processor)
        ids = []
        for ref, appointment in self._appointments(ctx):
            if appointment is None:
                # Created before a crash lost its id: TIMIFY knows it by our booking id.
                found = client.get_appointment(ref, external=True)
                appointment = found["id"] if found else None
            if appointment is not None:
                ids.append(appointment)
        if ids:
            client.delete_appointments(ids)
        if task.external_id:
            client.delete_customer(task.external_id)
        else:
            client.delete_customer(str(ctx.subject.id), external=True)
        if not self.verify(ctx, task):
            raise NotVerified("customer or appointment still readable after the delete")
        return VERIFIED

    def verify(self, ctx: Context, task: TaskRef) -> bool:
        client: timify.Timify = ctx.client(self.processor)
        if self._customer(client, ctx, task) is not None:
            return False
        for ref, appointment in self._appointments(ctx):
            found = client.get_appointment(appointment) if appointment else client.get_appointment(ref, external=True)
            if found is not None:
                return False
        return True


class FlexpertoHandler:
    """A video consultation's customer, chats and recordings (purpose ``video:{booking}``)."""

    processor = flexperto.PROCESSOR
    asynchronous = False

    def _customer_id(self, client: flexperto.Flexperto, task: TaskRef) -> str | None:
        if task.external_id:
            return task.external_id
        found = client.find_customer(task.purpose_arg("video:"))
        return str(found["id"]) if found else None

    def erase(self, ctx: Context, task: TaskRef) -> str:
        client: flexperto.Flexperto = ctx.client(self.processor)
        customer = self._customer_id(client, task)
        if customer is None or client.purge(customer):
            return VERIFIED
        return AWAITING

    def verify(self, ctx: Context, task: TaskRef) -> bool:
        client: flexperto.Flexperto = ctx.client(self.processor)
        customer = self._customer_id(client, task)
        return customer is None or (client.get_customer(customer) is None and not client.archives(customer))


class IsicHandler:
    """The card issuer's cardholder (purpose ``student-id:{order}``, cardholderId = order).

    Cards are voided first, then the cardholder's deletion is asked for; the issuer deletes
    asynchronously (202) and the cardholder reads back 404 once done. While the order is
    still in progress (received or forwarded, no card yet) the data is held.
    """

    processor = isic.PROCESSOR
    asynchronous = True

    def _cardholder(self, task: TaskRef) -> str:
        return task.external_id or task.purpose_arg("student-id:")

    def hold(self, session: Session, task: ErasureTask) -> str | None:
        if not task.purpose.startswith("student-id:"):
            return None  # no order behind it; erase() will say what is wrong
        ref = task.purpose.removeprefix("student-id:")
        order = session.exec(select(IsicOrder).where(IsicOrder.order_ref == ref)).first()
        if order is not None and order.status in (OrderStatus.received, OrderStatus.forwarded):
            return "ISIC order in progress"
        return None

    def erase(self, ctx: Context, task: TaskRef) -> str:
        client: isic.Isic = ctx.client(self.processor)
        cardholder = self._cardholder(task)
        for card in client.cards(cardholder):
            if card.get("status") != isic.VOIDED:
                client.void_card(card["cardNumber"])
        return VERIFIED if client.delete_cardholder(cardholder) == "gone" else AWAITING

    def verify(self, ctx: Context, task: TaskRef) -> bool:
        client: isic.Isic = ctx.client(self.processor)
        return client.deletion_verified(self._cardholder(task))


class NectHandler:
    """An identification case (purpose ``ident…``, external id: Nect's caseUuid).

    Nect only ever got our pseudonym; without a caseUuid the case is found by it.
    Deleted asynchronously (202), verified by 404.
    """

    processor = nect.PROCESSOR
    asynchronous = True

    def _case(self, client: nect.Nect, ctx: Context, task: TaskRef) -> str | None:
        if task.external_id:
            return task.external_id
        found = client.find_case(ctx.subject.pseudonym)
        return str(found["caseUuid"]) if found else None

    def erase(self, ctx: Context, task: TaskRef) -> str:
        client: nect.Nect = ctx.client(self.processor)
        case = self._case(client, ctx, task)
        if case is None or client.delete_case(case) == "gone":
            return VERIFIED
        return AWAITING

    def verify(self, ctx: Context, task: TaskRef) -> bool:
        client: nect.Nect = ctx.client(self.processor)
        case = self._case(client, ctx, task)
        return case is None or client.deletion_verified(case)


HANDLERS: dict[str, Handler] = {
    h.processor: h for h in (CleverReachHandler(), TimifyHandler(), FlexpertoHandler(), IsicHandler(), NectHandler())
}


def handler_for(processor: str, policy: Policy) -> Handler | None:
    """The processor's handler; None when it has no API or is configured as manual."""
    if processor in policy.manual:
        return None
    return HANDLERS.get(processor)


def hold_for(session: Session, task: ErasureTask, policy: Policy, today: date) -> tuple[str, date] | None:
    """(reason, until) when a retention duty keeps the task's data now, else None.

    A configured hold runs for its days from the first time it was applied; a hold the
    handler finds (an order in progress) is looked at again after the recheck interval.
    """
    configured = policy.configured_hold(task)
    if configured is not None:
        if task.hold_until is not None and task.hold_reason == configured.reason:
            # Already served: a hold runs once, it does not restart on every look.
            return None if today > task.hold_until else (configured.reason, task.hold_until)
        return configured.reason, today + timedelta(days=configured.days)
    handler = HANDLERS.get(task.processor)
    check = getattr(handler, "hold", None)
    reason = check(session, task) if check is not None and task.processor not in policy.manual else None
    if reason:
        return reason, today + timedelta(days=policy.hold_recheck_days)
    return None


# manual processors ----------------------------------------------------------------------
def manual_request_text(
    task: ErasureTask, subject: DataSubject, request: ErasureRequest, addressee: str | None = None
) -> str:
    """The request a person sends to a processor without an API, in German.

    It names the least that finds the record: the e-mail address (or, without one, the
    processor's own id), our request id and the legal basis. Shown to the officer only:
    never logged, never stored (it holds the address).
    """
    if subject.email:
        identifier = f"E-Mail-Adresse: {subject.email}"
    elif task.external_id:
        identifier = f"Ihre Kennung: {task.external_id}"
    else:
        raise ValueError("nothing left to identify the person by at this processor")
    return "\n".join(
        [
            f"An: {addressee or task.processor}",
            f"Betreff: Löschung personenbezogener Daten – unser Zeichen {request.id}",
            "",
            "Sehr geehrte Damen und Herren,",
            "",
            (
                "eine betroffene Person hat bei uns die Löschung ihrer personenbezogenen Daten verlangt "
                "(Art. 17 DSGVO). Als Verantwortliche weisen wir Sie als unseren Auftragsverarbeiter an "
                "(Art. 28 Abs. 3 lit. g DSGVO), alle Daten dieser Person, die Sie in unserem Auftrag "
                f"verarbeiten (Zweck: {task.purpose}), zu löschen. Die Person finden Sie unter:"
            ),
            "",
            f"    {identifier}",
            "",
            (
                "Bitte bestätigen Sie uns die Löschung schriftlich unter Angabe unseres Zeichens, "
                f"spätestens bis {request.due:%d.%m.%Y}. Wir benötigen die Bestätigung, um die Person nach "
                "Art. 19 DSGVO über die Empfänger zu unterrichten. Weitere Angaben zur Person geben wir "
                "nicht heraus; sie sind zum Auffinden nicht nötig."
            ),
            "",
            "Mit freundlichen Grüßen",
            "Der/die Datenschutzbeauftragte",
        ]
    )
