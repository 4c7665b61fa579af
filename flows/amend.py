"""Rectification (Art. 16, 19), restriction (Art. 18) and objection / withdrawal of every
consent (Art. 21, 7(3) GDPR), at the controller and at every recipient.

- **Rectification** (``rectify``): a corrected e-mail address, salutation, name, phone or
  birth date goes to every processor the recipient register says holds the person (each
  through its connector's ``AMENDER``, ``connectors/amend.py``): only the fields its
  allow-list permits and it holds, only those that differ, each verified by reading back.
  Then, once every processor is verified, our own copy: the subject (the e-mail is the
  subject index's key: it stays unique) and the job tables that hold a copy (bookings,
  student-ID orders; only the fields they hold). A second run finds nothing to change.
  Processors without an API get a generated letter (Art. 19).
- **Restriction** (``restrict``, ``lift_restriction``): the subject is marked restricted
  (``models.restriction``), so the delivery path holds back whatever would carry their data
  (``flows.delivery``) and the retention purges keep it (``models.retention``); where the
  API can, the record is made inactive there (CleverReach: the receiver is deactivated in
  its group), elsewhere a letter says what to do. Lifted by the officer with a reason, a
  date and the day the person was told beforehand (Art. 18(3)): reactivated where it was
  deactivated, letters, and the held-back records go to the jobs' retry queue.
- **Objection / withdrawal of everything** (``object_to_all``): every consent of the person
  on every list is withdrawn through the consent state machine (``models.consent``: event
  time and channel recorded), and the receivers are removed at CleverReach by the newsletter
  sync's own removal path (``flows.newsletter.RemovalJob``).

Every outcome is a ``Told`` per recipient: the Art. 19 report (``AmendOutcome.report``)
names each with what was done, without personal data; the letters (``AmendOutcome.letters``)
hold the person's data and are for the officer only: never logged, never an artifact.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from connectors import amend
from connectors.amend import Holder
from connectors.erasure import NotVerified
from connectors.transport import ProcessorError
from core import catalogue
from core.clock import berlin_today
from core.settings import get_settings
from flows.common import call_events, decision, reason, write_audit
from flows.delivery import run_batch
from flows.erasure_processors import Clients
from flows.rights import Ask, Outcome, register, write_outbox
from models.audit import AuditEvent
from models.bookings import Booking
from models.consent import ConsentList, ConsentRecord, ConsentState, apply_withdraw, withdrawn_without_signup
from models.cursors import await_deliveries, next_seq
from models.db import transaction
from models.erasure import Channel, UnknownSubject, check_free_text
from models.identity import pseudonym as pseudonym_of
from models.isic import IsicOrder
from models.recipients import Recipient, live_recipient_ids_among
from models.restriction import Restriction, active_restriction, check_informed_on, release
from models.rights import Changes, Right
from models.subjects import DataSubject, keep_alias
from models.types import event_key, utcnow

log = logging.getLogger(__name__)

# Outcomes per recipient (the Art. 19 report's "what was done").
UPDATED, UNCHANGED, NOT_HELD, NOTHING_TO_SEND = "updated", "unchanged", "not_held", "nothing_to_send"
DEACTIVATED, REACTIVATED, LETTER, FAILED, SKIPPED = "deactivated", "reactivated", "letter", "failed", "skipped"
REMOVED, WITHDRAWN = "removed", "withdrawn"


# input ----------------------------------------------------------------------------------
def correction(**values: Any) -> Changes:
    """The corrected values, checked as at every door (``models.rights.Changes``); ValueError
    naming the fields (never the values) otherwise."""
    try:
        checked = Changes.model_validate(values, context={"now": utcnow()})
    except ValidationError as exc:
        names = sorted({str(e["loc"][0]) for e in exc.errors() if e.get("loc")})
        raise ValueError(f"invalid correction: {', '.join(names) or 'give at least one corrected value'}") from None
    return checked


# outcome --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Told:
    """What one recipient was told (a line of the Art. 19 report): no personal data."""

    processor: str
    purpose: str
    how: str  # "api" or "letter"
    outcome: str
    fields: tuple[str, ...] = ()  # our field names (never values)
    detail: str = ""

    def row(self) -> dict[str, str]:
        return {
            "recipient": self.processor,
            "name": catalogue.processor(self.processor).legal_name if catalogue.known(self.processor) else "",
            "purpose": self.purpose,
            "how": self.how,
            "outcome": self.outcome,
            "fields": ", ".join(self.fields),
            "detail": self.detail,
        }


@dataclass
class AmendOutcome:
    """One request's result. ``report`` and ``counts`` are free of personal data (for the
    audit trail, artifacts and logs); ``letters`` hold the person's data (for the officer)."""

    right: str
    pseudonym: str
    told: list[Told] = field(default_factory=list)
    letters: dict[str, str] = field(default_factory=dict)  # "processor purpose" → German letter
    local: dict[str, int] = field(default_factory=dict)  # our own rows changed, by table
    complete: bool = True
    ref: str = ""  # the restriction's id (restriction, lift): names its outbox folder
    informed_on: date | None = None  # a lift: the day the person was told before it (Art. 18(3))
    corrected: tuple[str, ...] = ()  # a rectification: the fields changed in our copy (names)

    @property
    def counts(self) -> dict[str, int]:
        counted = Counter(t.outcome for t in self.told)
        counted.update({f"local_{table}": n for table, n in self.local.items()})
        return dict(counted)

    def report(self) -> dict[str, Any]:
        """The Art. 19 report: every recipient, what was done and how; no personal data."""
        report: dict[str, Any] = {
            "right": self.right,
            "subject": self.pseudonym,
            "complete": self.complete,
            "recipients": [t.row() for t in self.told],
            "controller": self.local,
        }
        if self.informed_on is not None:
            report["informed_on"] = self.informed_on.isoformat()
        return report

    def summary(self) -> str:
        """One line without personal data (counts only)."""
        counts = ", ".join(f"{key}={value}" for key, value in sorted(self.counts.items()))
        return f"{self.right}: {'complete' if self.complete else 'incomplete'} ({counts or 'no recipients'})"


# shared ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Recipient:
    processor: str
    purpose: str
    external_id: str | None


def _subject(session: Session, subject_id: uuid.UUID | str) -> DataSubject:
    try:
        key = subject_id if isinstance(subject_id, uuid.UUID) else uuid.UUID(str(subject_id))
    except ValueError:
        raise ValueError("subject id is not a UUID") from None
    subject = session.get(DataSubject, key)
    if subject is None or subject.erased_at is not None:
        raise UnknownSubject("no data subject with this id (or its data were erased)")
    return subject


def _recipients(session: Session, subject_id: uuid.UUID) -> list[_Recipient]:
    """The register's live rows for the subject ("holds" and "may hold")."""
    rows = session.exec(
        select(Recipient)
        .where(Recipient.subject_id == subject_id, col(Recipient.removed_at).is_(None))
        .order_by(col(Recipient.processor), col(Recipient.purpose))
    )
    return [_Recipient(r.processor, r.purpose, r.external_id) for r in rows]


def _same(name: str, held: str | None, wanted: str) -> bool:
    if held is None:
        return False
    if name == "email":  # processors keep addresses in lower case (CleverReach does)
        return held.strip().lower() == wanted.lower()
    return held.strip() == wanted


def _letter_fields(processor: str, purpose: str) -> frozenset[str]:
    """Our fields a processor without an API may hold: its allow-list read by our names
    ("name" for both names), or, when it only works on another processor's data, that
    processor's fields (USU on the newsletter at CleverReach)."""
    try:
        allowed = catalogue.allowed_fields(processor, purpose)
    except KeyError:
        return frozenset(amend.FIELDS)
    found = {name for name in amend.FIELDS if name in allowed}
    if "name" in allowed:
        found |= {"first_name", "last_name"}
    for on, on_purpose in catalogue.processor(processor).works_on if catalogue.known(processor) else ():
        other = amend.amender(on)
        if other is not None and purpose.startswith(on_purpose.rstrip(":")):
            found |= amend.permitted(on, purpose, other.names)
    return frozenset(found)


def _audit(session: Session, clients: Clients, processors: set[str], events: list[AuditEvent]) -> None:
    calls: list[AuditEvent] = []
    for processor in sorted(processors):
        calls += call_events(clients.drain_calls(processor))
    write_audit(session, [*calls, *events])


_LABELS = {
    "email": "E-Mail-Adresse",
    "salutation": "Anrede",
    "first_name": "Vorname",
    "last_name": "Nachname",
    "phone": "Telefonnummer",
    "birth_date": "Geburtsdatum",
}
_WHY = {
    "rectification": ("Berichtigung personenbezogener Daten", "Art. 16 und Art. 19 DSGVO"),
    "restriction": ("Einschränkung der Verarbeitung", "Art. 18 und Art. 19 DSGVO"),
    "lift": ("Aufhebung der Einschränkung der Verarbeitung", "Art. 18 Abs. 3 und Art. 19 DSGVO"),
    "objection": ("Widerruf der Einwilligung und Widerspruch", "Art. 7 Abs. 3, Art. 21 und Art. 19 DSGVO"),
}


def letter_text(
    kind: str,
    processor: str,
    purpose: str,
    identifier: str,
    reference: str,
    values: Mapping[str, str] | None = None,
    what_is_possible: str = "",
) -> str:
    """The letter to a processor without a suitable API call, in German (`kind`:
    rectification, restriction, lift, objection). Holds the person's data: shown to the
    officer only."""
    title, articles = _WHY[kind]
    entry = catalogue.processor(processor) if catalogue.known(processor) else None
    addressee = f"{entry.legal_name}, {entry.address}" if entry else processor
    found = catalogue.purpose_of(processor, purpose)
    what = found.name.de if found else purpose
    if kind == "rectification":
        body = [
            (
                "eine betroffene Person hat bei uns die Berichtigung ihrer Daten verlangt. Als Verantwortliche "
                "weisen wir Sie als unseren Auftragsverarbeiter an (Art. 28 Abs. 3 DSGVO), die Daten, die Sie in "
                f"unserem Auftrag verarbeiten (Zweck: {what}; unser Schlüssel {purpose}), wie folgt zu "
                "berichtigen, auch bei Ihren Unterauftragsverarbeitern:"
            ),
            "",
            *(f"    {_LABELS[name]}: {value}" for name, value in (values or {}).items()),
        ]
    elif kind == "restriction":
        body = [
            (
                "eine betroffene Person hat bei uns die Einschränkung der Verarbeitung ihrer Daten verlangt. "
                f"Bitte verarbeiten Sie die Daten, die Sie in unserem Auftrag verarbeiten (Zweck: {what}; unser "
                f"Schlüssel {purpose}), bis zu unserer Mitteilung nur noch, indem Sie sie speichern: keine "
                "Nutzung, kein Versand, keine Weitergabe, kein Löschen; markieren Sie sie als eingeschränkt."
            ),
        ]
    elif kind == "objection":
        body = [
            (
                "eine betroffene Person hat ihre Einwilligung widerrufen und der Verarbeitung ihrer Daten "
                f"widersprochen. Bitte verarbeiten Sie die Daten, die Sie in unserem Auftrag verarbeiten (Zweck: "
                f"{what}; unser Schlüssel {purpose}), für diesen Zweck nicht mehr: kein Versand, keine "
                "Auswertung, keine Weitergabe."
            ),
        ]
    else:
        body = [
            (
                "die Einschränkung der Verarbeitung, um die wir Sie gebeten hatten, ist aufgehoben. Sie dürfen "
                f"die Daten (Zweck: {what}; unser Schlüssel {purpose}) wieder wie vereinbart verarbeiten."
            ),
        ]
    if what_is_possible:
        body += ["", what_is_possible]
    return "\n".join(
        [
            f"An: {addressee}",
            f"Betreff: {title} ({articles}) – unser Zeichen {reference}",
            "",
            "Sehr geehrte Damen und Herren,",
            "",
            *body,
            "",
            "Die Person finden Sie unter:",
            "",
            f"    {identifier}",
            "",
            (
                "Bitte bestätigen Sie uns die Ausführung schriftlich unter Angabe unseres Zeichens; wir "
                "unterrichten die Person nach Art. 19 DSGVO über die Empfänger."
            ),
            "",
            "Mit freundlichen Grüßen",
            "Der/die Datenschutzbeauftragte",
        ]
    )


def _identifier(email: str | None, recipient: _Recipient) -> str:
    if email:
        return f"E-Mail-Adresse: {email}"
    if recipient.external_id:
        return f"Ihre Kennung: {recipient.external_id}"
    return f"unser Schlüssel: {recipient.purpose}"


# rectification --------------------------------------------------------------------------
def rectify(
    subject_id: uuid.UUID | str,
    fix: Changes,
    *,
    reference: str | None = None,
    settings: Any = None,
    now: datetime | None = None,
) -> AmendOutcome:
    """Apply a correction at every recipient and then here (Art. 16, 19); see the module.

    Raises (changing nothing) for an unknown subject or a new e-mail address that belongs to
    another subject. A processor that fails leaves the outcome incomplete and our own copy
    unchanged (the processors keyed by the address still find the record under the old one):
    run again, and what was done already reads back as unchanged.
    """
    settings, now = settings or get_settings(), now or utcnow()
    changes = fix.changes()
    # The open request holds the person's new data back from every job; a delivery that
    # started before it opened may still be landing the old values (PostgreSQL): it ends
    # before the register is read and anyone is told.
    await_deliveries()
    with transaction() as session:
        subject = _subject(session, subject_id)
        if "email" in changes and changes["email"] != subject.email:
            other = session.exec(select(DataSubject.id).where(DataSubject.email == changes["email"])).first()
            if other is not None:
                raise ValueError("the corrected e-mail address belongs to another data subject")
        sid, pseudonym, old_email = subject.id, subject.pseudonym, subject.email
        recipients = _recipients(session, sid)
    reference = reference or str(sid)
    new_email = changes.get("email") if changes.get("email") != old_email else None
    outcome = AmendOutcome("rectification", pseudonym)
    clients, used, events = Clients(settings), set(), []
    for recipient in recipients:
        told = _rectify_at(
            clients,
            recipient,
            Holder(
                recipient.processor,
                recipient.purpose,
                recipient.external_id,
                sid,
                pseudonym,
                old_email,
                new_email,
                settings,
            ),
            changes,
        )
        used.add(recipient.processor)
        if told.how == LETTER:
            fields = _letter_fields(recipient.processor, recipient.purpose) & changes.keys()
            told = Told(
                recipient.processor,
                recipient.purpose,
                LETTER,
                LETTER if fields else NOTHING_TO_SEND,
                tuple(sorted(fields)),
            )
            if fields:
                outcome.letters[f"{recipient.processor} {recipient.purpose}"] = letter_text(
                    "rectification",
                    recipient.processor,
                    recipient.purpose,
                    _identifier(old_email, recipient),
                    reference,
                    {name: changes[name] for name in amend.FIELDS if name in fields},
                )
        outcome.told.append(told)
        events.append(_told_event("rectification", told, pseudonym))
    outcome.complete = not any(t.outcome == FAILED for t in outcome.told)
    with transaction() as session:
        if outcome.complete:
            outcome.local, outcome.corrected = _rectify_here(session, sid, changes, settings.hmac_key(), now)
            events.append(
                decision(
                    "rectification.local",
                    "applied",
                    None,
                    pseudonym,
                    " ".join(f"{k}={v}" for k, v in sorted(outcome.local.items())),
                )
            )
        else:
            events.append(decision("rectification.local", "waiting", None, pseudonym, "a recipient failed"))
        _audit(session, clients, used, events)
    log.info("rectification of %s: %s", pseudonym, outcome.summary())
    return outcome


def _told_event(right: str, told: Told, pseudonym: str) -> AuditEvent:
    detail = " ".join(filter(None, [f"fields={','.join(told.fields)}" if told.fields else "", told.detail]))
    return decision(f"{right}.{told.how}", told.outcome, told.processor, pseudonym, detail, purpose=told.purpose)


def _rectify_at(clients: Clients, recipient: _Recipient, holder: Holder, changes: Mapping[str, str]) -> Told:
    """Correct the record at one processor and read it back; a Told with how=letter when
    the processor has no API."""
    amender = amend.amender(recipient.processor)
    if amender is None:
        return Told(recipient.processor, recipient.purpose, LETTER, LETTER)
    fields = amend.permitted(recipient.processor, recipient.purpose, amender.names) & changes.keys()
    if not fields:  # nothing of what changed may go there (a phone at CleverReach, anything at Nect)
        return Told(recipient.processor, recipient.purpose, "api", NOTHING_TO_SEND)
    try:
        client = clients.get(recipient.processor)
        holder = _located(amender, client, holder)
        held = amender.read(client, holder)
        if held is None:
            return Told(recipient.processor, recipient.purpose, "api", NOT_HELD)
        # Only what it holds (of insurance number and birth date TIMIFY holds one), only what differs.
        diff = {
            name: changes[name]
            for name in sorted(fields)
            if name in held and not _same(name, held[name], changes[name])
        }
        if not diff:
            return Told(recipient.processor, recipient.purpose, "api", UNCHANGED, tuple(sorted(fields & held.keys())))
        amender.update(client, holder, diff)
        after = amender.read(client, holder)
        if after is None or not all(_same(name, after.get(name), value) for name, value in diff.items()):
            raise NotVerified("the corrected values do not read back")
        return Told(recipient.processor, recipient.purpose, "api", UPDATED, tuple(diff))
    except (ProcessorError, ValueError, NotVerified) as exc:
        log.warning("rectification at %s failed: %s", recipient.processor, reason(exc))
        return Told(recipient.processor, recipient.purpose, "api", FAILED, tuple(sorted(fields)), reason(exc))


def _located(amender: Any, client: Any, holder: Holder) -> Holder:
    """The holder with the processor's id for the record, where its amender can say it
    (``locate``) and the register lacks it (CleverReach: the push keeps no receiver id).
    Kept in the register at once, committed before anything changes there: from then on an
    objection's removal or an erasure addresses that record by its id, also while a change
    of address is half done and ours and the processor's disagree. Only on this path: the
    push stays set-based, without ids."""
    locate = getattr(amender, "locate", None)
    found = locate(client, holder) if locate is not None else None
    if found is None or found == holder.external_id:
        return holder
    with transaction() as session:
        row = session.exec(
            select(Recipient).where(
                Recipient.subject_id == holder.subject_id,
                Recipient.processor == holder.processor,
                Recipient.purpose == holder.purpose,
                col(Recipient.removed_at).is_(None),
            )
        ).first()
        if row is not None:
            row.external_id = found
    return replace(holder, external_id=found)


def _rectify_here(
    session: Session, subject_id: uuid.UUID, changes: Mapping[str, str], key: bytes, now: datetime
) -> tuple[dict[str, int], tuple[str, ...]]:
    """Our own copy: the subject's given fields; in bookings and student-ID orders the
    fields they hold (a booking given with an insurance number gets no birth date). The
    rows changed by table, and the names of the fields that changed anywhere. A corrected
    address stays the person's for what is dated until `now` (``AddressAlias``)."""
    changed: Counter[str] = Counter()
    corrected: set[str] = set()
    subject = _subject(session, subject_id)
    typed: dict[str, Any] = {k: (date.fromisoformat(v) if k == "birth_date" else v) for k, v in changes.items()}

    def put(row: Any, names: tuple[str, ...], table: str, only_held: bool) -> None:
        touched = False
        for name in names:
            if (
                name in typed
                and (not only_held or getattr(row, name) is not None)
                and getattr(row, name) != typed[name]
            ):
                setattr(row, name, typed[name])
                corrected.add(name)
                touched = True
        if touched:
            changed[table] += 1

    former = subject.email
    put(subject, ("email", "salutation", "first_name", "last_name"), "data_subject", only_held=False)
    if former is not None and subject.email != former:
        keep_alias(session, pseudonym_of(key, "email", former), subject_id, now)
    for booking in session.exec(select(Booking).where(Booking.subject_id == subject_id)):
        put(booking, ("salutation", "first_name", "last_name", "phone", "birth_date"), "booking", only_held=True)
    orders = select(IsicOrder).where(IsicOrder.subject_id == subject_id, col(IsicOrder.fields_erased_at).is_(None))
    for order in session.exec(orders):
        put(order, ("first_name", "last_name", "birth_date"), "isic_order", only_held=True)
    return dict(changed), tuple(name for name in amend.FIELDS if name in corrected)


# restriction ----------------------------------------------------------------------------
def restrict(
    subject_id: uuid.UUID | str,
    *,
    reason_text: str,
    restricted_at: datetime | None = None,
    request_id: uuid.UUID | None = None,
    reference: str | None = None,
    settings: Any = None,
    now: datetime | None = None,
) -> AmendOutcome:
    """Restrict the subject's processing (Art. 18): marked here, so no job sends anything
    new of theirs; deactivated at processors whose API can, letters to the others.

    Idempotent: a subject already restricted keeps that restriction (its start and reason),
    and the deactivations are asked for again (a deactivated record stays so).
    """
    settings, now = settings or get_settings(), now or utcnow()
    restricted_at = restricted_at or now
    if restricted_at.tzinfo is None:
        raise ValueError("restricted_at needs a timezone")
    with transaction() as session:
        subject = _subject(session, subject_id)
        why = check_free_text(reason_text, "reason", subject, limit=300)
        restriction = active_restriction(session, subject.id)
        if restriction is None:
            restriction = Restriction(
                subject_id=subject.id, request_id=request_id, reason=why, restricted_at=restricted_at, recorded_at=now
            )
            session.add(restriction)
            write_audit(
                session, [decision("restriction.start", "recorded", None, subject.pseudonym, request=request_id or "-")]
            )
        sid, pseudonym, email = subject.id, subject.pseudonym, subject.email
        recipients = _recipients(session, sid)
    # A delivery that read the person as free just before the restriction committed may be
    # landing their data now (PostgreSQL): it ends before the register is read again and
    # anyone is told, so its upsert cannot undo the deactivation.
    if await_deliveries():
        with transaction() as session:
            recipients = _recipients(session, sid)
    reference = reference or str(request_id or sid)
    outcome = AmendOutcome("restriction", pseudonym)
    clients, deactivated, events = Clients(settings), [], []
    for recipient in recipients:
        holder = Holder(
            recipient.processor, recipient.purpose, recipient.external_id, sid, pseudonym, email, settings=settings
        )
        told = _switch(clients, recipient, holder, on=False)
        if told.outcome == DEACTIVATED:
            deactivated.append((recipient.processor, recipient.purpose))
        if told.how == LETTER:
            outcome.letters[f"{recipient.processor} {recipient.purpose}"] = letter_text(
                "restriction",
                recipient.processor,
                recipient.purpose,
                _identifier(email, recipient),
                reference,
                what_is_possible=told.detail,
            )
        outcome.told.append(told)
        events.append(_told_event("restriction", told, pseudonym))
    outcome.complete = not any(t.outcome == FAILED for t in outcome.told)
    with transaction() as session:
        restriction = active_restriction(session, sid)
        if restriction is not None:
            for processor, purpose in deactivated:
                restriction.note_deactivated(processor, purpose)
        _audit(session, clients, {r.processor for r in recipients}, events)
    log.info("restriction of %s: %s", pseudonym, outcome.summary())
    return outcome


_NO_CALL = (
    "Über die Schnittstelle lässt sich der Datensatz nicht sperren, ohne ihn zu löschen; "
    "wir bitten Sie deshalb schriftlich darum."
)


def _switch(clients: Clients, recipient: _Recipient, holder: Holder, *, on: bool) -> Told:
    """Deactivate (on=False) or reactivate the record at one processor, verified; a Told
    with how=letter where no API call does it."""
    amender = amend.amender(recipient.processor)
    if amender is None:
        return Told(recipient.processor, recipient.purpose, LETTER, LETTER)
    if not amender.can_deactivate:
        return Told(recipient.processor, recipient.purpose, LETTER, LETTER, detail=_NO_CALL)
    try:
        client = clients.get(recipient.processor)
        done = amender.reactivate(client, holder) if on else amender.deactivate(client, holder)
        if not done:
            raise NotVerified("the record does not read back as " + ("active" if on else "inactive"))
        return Told(recipient.processor, recipient.purpose, "api", REACTIVATED if on else DEACTIVATED)
    except (ProcessorError, ValueError, NotVerified) as exc:
        log.warning("restriction at %s failed: %s", recipient.processor, reason(exc))
        return Told(recipient.processor, recipient.purpose, "api", FAILED, detail=reason(exc))


def lift_restriction(
    subject_id: uuid.UUID | str,
    *,
    reason_text: str,
    informed_on: date | None,
    lifted_at: datetime | None = None,
    reference: str | None = None,
    settings: Any = None,
    now: datetime | None = None,
) -> AmendOutcome:
    """Lift the subject's restriction (the officer decides, with a reason and a date, having
    told the person before, on `informed_on`: Art. 18(3)): reactivated where it was
    deactivated (unless the consent behind it no longer stands), letters where one was
    sent, and the records held back meanwhile go to the jobs' retry queue. When a
    reactivation fails, nothing is lifted (``complete`` is False, the attempt audited): run
    it again. ValueError when no restriction is in force; ``InformedOnError`` (a ValueError)
    when `informed_on` is missing, in the future (Berlin), before the restriction began or
    after the lift. Either way before any call: nothing changes."""
    settings, now = settings or get_settings(), now or utcnow()
    lifted_at = lifted_at or now
    if lifted_at.tzinfo is None:
        raise ValueError("lifted_at needs a timezone")
    with transaction() as session:
        subject = _subject(session, subject_id)
        why = check_free_text(reason_text, "reason", subject, limit=300)
        if not why:
            raise ValueError("a reason is required to lift a restriction")
        restriction = active_restriction(session, subject.id)
        if restriction is None:
            raise ValueError("no restriction in force for this data subject")
        if lifted_at < restriction.restricted_at:
            raise ValueError("lifted_at lies before the restriction began")
        told_on = check_informed_on(informed_on, restriction.restricted_at, lifted_at, berlin_today(now))
        sid, pseudonym, email = subject.id, subject.pseudonym, subject.email
        was_deactivated = set(restriction.deactivated_at())
        recipients = _recipients(session, sid)
        lapsed = _lapsed_lists(session, sid)
    outcome = AmendOutcome("lift", pseudonym, ref=str(restriction.id), informed_on=told_on)
    clients, events = Clients(settings), []
    reference = reference or str(restriction.request_id or sid)
    for recipient in recipients:
        holder = Holder(
            recipient.processor, recipient.purpose, recipient.external_id, sid, pseudonym, email, settings=settings
        )
        if (recipient.processor, recipient.purpose) in was_deactivated:
            if recipient.purpose in lapsed:  # withdrawn meanwhile: the removal path deletes it
                told = Told(recipient.processor, recipient.purpose, "api", SKIPPED, detail="consent no longer stands")
            else:
                told = _switch(clients, recipient, holder, on=True)
        else:
            told = _lift_letter(recipient)
            if told.how == LETTER:
                outcome.letters[f"{recipient.processor} {recipient.purpose}"] = letter_text(
                    "lift", recipient.processor, recipient.purpose, _identifier(email, recipient), reference
                )
        outcome.told.append(told)
        events.append(_told_event("restriction.lift", told, pseudonym))
    outcome.complete = not any(t.outcome == FAILED for t in outcome.told)
    if not outcome.complete:
        # Not lifted: a receiver left deactivated after the lift would read as an
        # unsubscribe to pull-newsletter-unsubscribes, a withdrawal the person never made.
        # The restriction stays in force, the attempt is audited, and a second lift tries again.
        with transaction() as session:
            failed = ",".join(sorted({t.processor for t in outcome.told if t.outcome == FAILED}))
            events.append(decision("restriction.lift", "failed", None, pseudonym, failed=failed))
            _audit(session, clients, {r.processor for r in recipients}, events)
        log.warning("restriction of %s not lifted: %s", pseudonym, outcome.summary())
        return outcome
    with transaction() as session:
        restriction = active_restriction(session, sid)
        assert restriction is not None
        restriction.lifted_at, restriction.lift_reason, restriction.lift_recorded_at = lifted_at, why, now
        restriction.lift_informed_on = told_on
        released = release(session, sid, now)
        outcome.local = {"released": released} if released else {}
        events.append(
            decision(
                "restriction.lift", "recorded", None, pseudonym, released=released, informed_on=told_on.isoformat()
            )
        )
        _audit(session, clients, {r.processor for r in recipients}, events)
    log.info("restriction of %s lifted: %s", pseudonym, outcome.summary())
    return outcome


def _lift_letter(recipient: _Recipient) -> Told:
    """A recipient the restriction did not deactivate through its API: one told by letter
    is told by letter again; one whose API could have (the record was not there then) has
    nothing to resume."""
    amender = amend.amender(recipient.processor)
    if amender is not None and amender.can_deactivate:
        return Told(recipient.processor, recipient.purpose, "api", SKIPPED, detail="not deactivated by it")
    return Told(recipient.processor, recipient.purpose, LETTER, LETTER)


def _lapsed_lists(session: Session, subject_id: uuid.UUID) -> set[str]:
    """Register purposes ("consent:{list}") of the subject's lists whose consent does not stand."""
    rows = session.exec(
        select(ConsentRecord.list_name, ConsentRecord.state).where(ConsentRecord.subject_id == subject_id)
    )
    return {f"consent:{name}" for name, state in rows if state != ConsentState.confirmed}


# objection ------------------------------------------------------------------------------
def object_to_all(
    subject_id: uuid.UUID | str,
    *,
    channel: str,
    at: datetime,
    settings: Any = None,
    now: datetime | None = None,
    remove: Callable[[str, list[uuid.UUID]], dict[str, int]] | None = None,
    reference: str = "",
) -> AmendOutcome:
    """Withdraw every consent of the subject on every list (Art. 21, 7(3)), dated `at`, with
    the request's `channel`, and remove the receivers at CleverReach through the newsletter
    sync's removal path; every other recipient of a consent's data (USU, without an API) gets
    a letter under our `reference` (Art. 19: each is told). A list the subject has no consent
    on gets the withdrawal all the same (audited, not told: nothing was there), so a sign-up
    dated before the objection that arrives later does not subscribe them
    (``models.consent.replay``). Idempotent: a withdrawn consent stays withdrawn, a removed
    receiver is not asked for again (a letter is written again: nothing says it was done)."""
    settings, now = settings or get_settings(), now or utcnow()
    if at.tzinfo is None:
        raise ValueError("at needs a timezone")
    if at > now:
        raise ValueError("at lies in the future")
    try:
        channel = Channel(channel).value  # how the request reached us, as for erasure
    except ValueError:
        raise ValueError(f"channel must be one of {', '.join(c.value for c in Channel)}") from None
    key = settings.hmac_key()
    events: list[AuditEvent] = []
    with transaction() as session:
        subject = _subject(session, subject_id)
        sid, pseudonym = subject.id, subject.pseudonym
        records = list(session.exec(select(ConsentRecord).where(ConsentRecord.subject_id == sid)))
        outcome = AmendOutcome("objection", pseudonym)
        for absent in sorted({str(n) for n in ConsentList} - {r.list_name for r in records}):
            dedupe = event_key(key, "objection", sid, absent, at.isoformat())
            kept, withdrawal = withdrawn_without_signup(sid, absent, at, channel, dedupe, now)
            session.add(kept)
            session.flush()  # the record before its event (a foreign key)
            session.add(withdrawal)
            events.append(decision("consent.withdraw", "recorded", None, pseudonym, channel, list=absent))
        seq = next_seq(session, "consent", len(records)) if records else 0
        for offset, record in enumerate(sorted(records, key=lambda r: r.list_name)):
            dedupe = event_key(key, "objection", record.id, at.isoformat())
            event = apply_withdraw(record, at, channel, seq + offset, dedupe)
            if event is not None:
                session.add(event)
            done = WITHDRAWN if event is not None else UNCHANGED
            outcome.told.append(Told("controller", f"consent:{record.list_name}", "local", done, detail=record.state))
            events.append(
                decision(
                    "consent.withdraw",
                    "recorded" if event else "unchanged",
                    None,
                    pseudonym,
                    channel,
                    list=record.list_name,
                )
            )
        write_audit(session, events)
        email = subject.email
        # Those a removal call cannot reach (no API: USU) are written to, as a restriction's are.
        others = [
            r
            for r in _recipients(session, sid)
            if r.purpose.startswith("consent:") and amend.amender(r.processor) is None
        ]
        lists = {r.list_name: r for r in records}
        to_remove = {
            name: live_recipient_ids_among(
                session,
                "cleverreach",
                f"consent:{name}",
                sa_select(col(DataSubject.id)).where(col(DataSubject.id) == sid),
            )
            for name in lists
        }
    for name, ids in sorted(to_remove.items()):
        if not ids:
            continue
        counts = (remove or _remove_at_cleverreach(settings))(name, ids)
        removed = counts.get("removed", 0)
        outcome.told.append(
            Told(
                "cleverreach",
                f"consent:{name}",
                "api",
                REMOVED if removed == len(ids) else FAILED,
                detail=" ".join(f"{k}={v}" for k, v in sorted(counts.items())),
            )
        )
    for recipient in others:
        outcome.letters[f"{recipient.processor} {recipient.purpose}"] = letter_text(
            "objection",
            recipient.processor,
            recipient.purpose,
            _identifier(email, recipient),
            reference or str(sid),
        )
        outcome.told.append(Told(recipient.processor, recipient.purpose, LETTER, LETTER))
    outcome.complete = not any(t.outcome == FAILED for t in outcome.told)
    log.info("objection of %s: %s", pseudonym, outcome.summary())
    return outcome


def _remove_at_cleverreach(settings: Any) -> Callable[[str, list[uuid.UUID]], dict[str, int]]:
    """The newsletter sync's removal path (``RemovalJob`` through ``run_batch``) for a list."""
    from connectors import cleverreach
    from flows import newsletter

    client = cleverreach.from_settings(settings)

    def remove(list_name: str, ids: list[uuid.UUID]) -> dict[str, int]:
        group = str(settings.cleverreach.group(list_name) or "")
        if not group:
            raise ValueError(f"no CleverReach group configured for list {list_name}")
        job = newsletter.RemovalJob(client, ConsentList(list_name), group)
        return run_batch(job, len(ids), [str(i) for i in ids])

    return remove


# the rights requests' handlers (flows.rights) -------------------------------------------
def _answered(ask: Ask, result: AmendOutcome) -> Outcome:
    """The handler's Outcome: the Art. 19 report and the letters to the outbox (encrypted,
    for the officer: ``psync request show``), counts with literal keys, a summary without
    personal data. Not done while a processor failed: the follow-up asks again."""
    files = {"art19-report.json": json.dumps(result.report(), indent=2, ensure_ascii=False).encode()}
    for name, text in sorted(result.letters.items()):
        processor, _, purpose = name.partition(" ")
        files[f"letter-{processor}-{_file_part(purpose)}.txt"] = text.encode()
    write_outbox(str(ask.request_id), files, ask.settings, ask.now)
    told = Counter(t.outcome for t in result.told)
    counts: dict[str, int] = {}
    if told[UPDATED]:
        counts["rectified"] = told[UPDATED]
    if told[DEACTIVATED]:
        counts["deactivated"] = told[DEACTIVATED]
    if told[WITHDRAWN]:
        counts["consents_withdrawn"] = told[WITHDRAWN]
    if told[REMOVED]:
        counts["removed"] = told[REMOVED]
    if result.letters:
        counts["amend_letters"] = len(result.letters)
    if told[FAILED]:
        counts["amend_failed"] = told[FAILED]
    return Outcome(result.complete, result.summary(), counts, corrected=result.corrected)


def _file_part(purpose: str) -> str:
    """A register purpose as part of a file name ("video:B-1" → "video_B-1")."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in purpose)[:60]


@register(Right.rectification)
def answer_rectification(ask: Ask) -> Outcome:
    """A rectification request (Art. 16, 19): ``rectify`` with the request's new values."""
    if not ask.changes:
        raise ValueError("a rectification request needs corrected values")
    fix = correction(**{name: value for name, value in ask.changes.items() if value is not None})
    return _answered(ask, rectify(ask.subject_id, fix, reference=str(ask.request_id), settings=ask.settings))


@register(Right.restriction)
def answer_restriction(ask: Ask) -> Outcome:
    """A restriction request (Art. 18): ``restrict``, in force from the request's receipt
    until the officer lifts it (``psync request lift``)."""
    result = restrict(
        ask.subject_id,
        reason_text="Antrag auf Einschränkung der Verarbeitung (Art. 18 DSGVO)",
        restricted_at=ask.received_at,
        request_id=ask.request_id,
        reference=str(ask.request_id),
        settings=ask.settings,
    )
    return _answered(ask, result)


@register(Right.objection)
def answer_objection(ask: Ask) -> Outcome:
    """An objection / withdrawal of every consent (Art. 21, 7(3)): ``object_to_all``, dated
    when the request reached us, with its channel."""
    outcome = object_to_all(
        ask.subject_id, channel=ask.channel, at=ask.received_at, settings=ask.settings, reference=str(ask.request_id)
    )
    return _answered(ask, outcome)
