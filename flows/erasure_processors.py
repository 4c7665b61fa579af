"""The erasure fan-out's view of the processors, read from the catalogue (Art. 17, 19 GDPR).

No processor is named here. ``core.catalogue`` says, per processor, whether erasure goes
through an API or by hand; an API processor's connector module declares its ``ERASER``
(``connectors/erasure.py``: erase, verify); a purpose's ``local`` and ``hold_while`` name the
controller's records an erasure needs and the check that keeps data lawfully for now
(``models.erasure.local_records``, ``hold_reason``).

A processor without an eraser (the catalogue's manual ones, any processor it does not know) or
configured as manual (``PSYNC_ERASURE_MANUAL_PROCESSORS``) gets a manual task: a person sends
``manual_request_text`` and confirms the erasure with evidence; ``reminder_due`` says when to
ask again.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlmodel import Session

from connectors import erasure as erasers
from connectors.erasure import AWAITING, VERIFIED, Eraser, NotVerified, Target
from connectors.transport import CallRecord
from core import catalogue
from core.clock import berlin_today
from models.erasure import ErasureRequest, ErasureTask, hold_reason
from models.subjects import DataSubject

__all__ = ["AWAITING", "VERIFIED", "NotVerified", "Target"]


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

    def target(self, subject: SubjectRef, settings: Any, local: tuple = ()) -> Target:
        """What the processor's eraser works with."""
        return Target(
            self.processor,
            self.purpose,
            self.external_id,
            subject.id,
            subject.pseudonym,
            subject.email,
            settings,
            local,
        )


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
    person's data). A hold the catalogue's purpose finds (an order in progress) is looked at
    again after `hold_recheck_days`.
    """

    holds: Mapping[str, Hold] = field(default_factory=dict)
    manual: Mapping[str, str] = field(default_factory=dict)
    hold_recheck_days: int = 7
    lease: timedelta = timedelta(minutes=15)
    # An accepted (202) deletion still not done after this long is asked for again.
    reissue_after: timedelta = timedelta(days=7)
    # A manual request unconfirmed after this many days is flagged for a reminder.
    reminder_days: int = 14

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

    Manual processors are the catalogue's (those without an API) plus
    ``erasure_manual_processors`` ({"printshop": "Druckerei Beispiel GmbH"}), which may also
    switch an API processor to manual. Reads ``erasure_holds`` ({"printshop:flyer":
    {"reason": "...", "days": 30}}), ``erasure_hold_recheck_days``, ``erasure_claim_minutes``,
    ``erasure_reissue_days`` and ``erasure_manual_reminder_days``.
    """
    holds = {
        key: value if isinstance(value, Hold) else Hold(str(value["reason"]), int(value["days"]))
        for key, value in settings.erasure_holds.items()
    }
    return Policy(
        holds=holds,
        manual={**catalogue.manual_processors(), **settings.erasure_manual_processors},
        hold_recheck_days=settings.erasure_hold_recheck_days,
        lease=timedelta(minutes=settings.erasure_claim_minutes),
        reissue_after=timedelta(days=settings.erasure_reissue_days),
        reminder_days=settings.erasure_manual_reminder_days,
    )


# connectors -----------------------------------------------------------------------------
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
                client = self._clients[processor] = erasers.connect(processor, self.settings)
            return client

    def drain_calls(self, processor: str) -> list[CallRecord]:
        with self._lock:
            client = self._clients.get(processor)
        return client.http.drain_calls() if client is not None else []


def handler_for(processor: str, policy: Policy) -> Eraser | None:
    """The processor's eraser; None when it has no API or is configured as manual."""
    if processor in policy.manual:
        return None
    return erasers.eraser(processor)


def hold_for(session: Session, task: ErasureTask, policy: Policy, today: date) -> tuple[str, date] | None:
    """(reason, until) when a retention duty keeps the task's data now, else None.

    A configured hold runs for its days from the first time it was applied; a hold the
    catalogue's purpose finds (an order in progress) is looked at again after the recheck
    interval.
    """
    configured = policy.configured_hold(task)
    if configured is not None:
        if task.hold_until is not None and task.hold_reason == configured.reason:
            # Already served: a hold runs once, it does not restart on every look.
            return None if today > task.hold_until else (configured.reason, task.hold_until)
        return configured.reason, today + timedelta(days=configured.days)
    if task.processor in policy.manual:
        return None
    purpose = catalogue.purpose_of(task.processor, task.purpose)
    reason = hold_reason(session, purpose.hold_while if purpose else None, task.purpose)
    if reason:
        return reason, today + timedelta(days=policy.hold_recheck_days)
    return None


def reminder_due(task: ErasureTask, policy: Policy, today: date) -> bool:
    """Whether a manual request still unconfirmed is due for a reminder today.

    The request was made available at ``requested_at``; reminder n is due ``n`` times
    ``reminder_days`` Berlin calendar days after it (``attempts`` counts those sent).
    """
    if task.requested_at is None:
        return False
    first = berlin_today(task.requested_at)
    return today >= first + timedelta(days=policy.reminder_days * (task.attempts + 1))


# manual processors ----------------------------------------------------------------------
def _addressee(processor: str, configured: str | None) -> str:
    if configured:
        return configured
    if catalogue.known(processor):
        entry = catalogue.processor(processor)
        return f"{entry.legal_name}, {entry.address}"
    return processor


def manual_request_text(
    task: ErasureTask,
    subject: DataSubject,
    request: ErasureRequest,
    addressee: str | None = None,
    reminder: int = 0,
) -> str:
    """The request a person sends to a processor without an API, in German.

    It names the legal basis the processing rested on (from the catalogue), Art. 17 and
    Art. 19, our request id, and the least that finds the record: the e-mail address (or,
    without one, the processor's own id). `reminder` > 0 makes it the n-th reminder. Shown
    to the officer only: never logged, never stored (it holds the address).
    """
    if subject.email:
        identifier = f"E-Mail-Adresse: {subject.email}"
    elif task.external_id:
        identifier = f"Ihre Kennung: {task.external_id}"
    else:
        raise ValueError("nothing left to identify the person by at this processor")
    purpose = catalogue.purpose_of(task.processor, task.purpose)
    what = purpose.name.de if purpose else task.purpose
    basis = (
        f"Die Verarbeitung beruhte auf {purpose.legal_basis}; ihr Zweck ist für diese Person entfallen."
        if purpose
        else "Der Zweck der Verarbeitung ist für diese Person entfallen."
    )
    subject_line = f"Betreff: Löschung personenbezogener Daten – unser Zeichen {request.id}"
    opening: list[str] = []
    if reminder:
        subject_line = (
            f"Betreff: {reminder}. Erinnerung – Löschung personenbezogener Daten – unser Zeichen {request.id}"
        )
        opening = [
            (
                "unsere Weisung zur Löschung (unten wiederholt) ist bislang nicht bestätigt. "
                "Bitte holen Sie die Bestätigung umgehend nach."
            ),
            "",
        ]
    return "\n".join(
        [
            f"An: {_addressee(task.processor, addressee)}",
            subject_line,
            "",
            "Sehr geehrte Damen und Herren,",
            "",
            *opening,
            (
                "eine betroffene Person hat bei uns die Löschung ihrer personenbezogenen Daten verlangt "
                "(Art. 17 DSGVO). Als Verantwortliche weisen wir Sie als unseren Auftragsverarbeiter an "
                "(Art. 28 Abs. 3 lit. g DSGVO), alle Daten dieser Person, die Sie in unserem Auftrag "
                f"verarbeiten (Zweck: {what}; unser Schlüssel {task.purpose}), zu löschen, auch in "
                f"Kopien und bei Ihren Unterauftragsverarbeitern. {basis} Die Person finden Sie unter:"
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
