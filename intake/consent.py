"""Intake of consent events (seed 000): sign-up, confirm, withdraw, for each list.

Storing is idempotent: every event has a keyed content hash (``ConsentEvent.dedupe_key``),
and a line seen before is a duplicate.

Events count by their time, not their arrival: each line is added to its record's history
and the record is what ``models.consent.replay`` makes of that history. A line that changes
nothing (older than the decision it would override, or a repeat in other words) is
recorded all the same and reported ``unchanged`` with the reason, so a sign-up dated
before it that arrives later is judged with it. For a person whose data was erased, a line
never brings old data back: what is dated before the erasure, and a confirmation, are kept
as a receipt only; a withdrawal is kept without personal data; only a new sign-up dated
after the erasure starts again, from nothing.

A confirmation whose sign-up has not arrived after its whole file (it comes in a later file
or request) is kept in its record's history, the record ``awaiting_signup`` (a subject not
known yet is kept as the pseudonym of its address), and reported ``pending``: the sign-up,
when it comes, is replayed before it. It expires like an unconfirmed sign-up
(``expire-unconfirmed-optins``, counted from the confirmation), and an erasure takes it.

A sign-up names the ``policy_version`` of the consent text it was given under; it is
required, and a version whose texts are not registered (``models.consent_text``) is
rejected, changing nothing: the proof of consent must be able to print what was agreed to.
The registered versions are looked up once per chunk.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from pydantic import Field, model_validator
from sqlalchemy import bindparam, union_all
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from intake.receipts import erased_reason, ignored
from intake.types import Applied, Email, EventBase, InsuranceNumber, IpAddress, NotYetKnown
from models.audit import AuditEvent
from models.consent import (
    ENDED,
    ConsentEvent,
    ConsentList,
    ConsentState,
    Decision,
    EventKind,
    Record,
    Step,
    TransitionError,
    cut_of,
    describe_time,
    insert_events,
    load_records,
    replay,
    settle,
    write_records,
)
from models.consent_text import known_versions
from models.cursors import next_seq
from models.receipts import IntakeReceipt
from models.subject_index import SubjectIndex, erased_before
from models.subjects import Subject
from models.types import content_key, event_key, utcnow


class NoSignup(TransitionError, NotYetKnown):
    """A confirmation with no record of a sign-up for that person and list (yet): on intake's
    first pass it is tried again after the file's other lines."""


class UnknownVersion(TransitionError):
    """A sign-up naming a policy version whose texts are not registered: its proof of
    consent could not say what was consented to (``models.consent_text``)."""


UNKNOWN_VERSION = (
    "policy_version: no consent text is registered for this version; register its texts first (psync consent texts add)"
)


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
    ip: IpAddress
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
    ip: IpAddress


class ConsentWithdraw(_ConsentEvent):
    """Consent withdrawn by e-mail to the controller or in the portal."""

    type: Literal["consent.withdraw"]
    channel: Literal["email", "portal"]


ConsentIntakeEvent = ConsentSignup | ConsentConfirm | ConsentWithdraw


# Iterating the enum itself costs a generator and a lookup per member, on every sign-up.
_LISTS = tuple(ConsentList)

_DUPLICATE = Applied("duplicate")

# The dedupe keys among ``keys`` of a stored consent event or an intake receipt.
_SEEN = union_all(
    sa_select(col(IntakeReceipt.dedupe_key)).where(
        col(IntakeReceipt.dedupe_key).in_(bindparam("keys", expanding=True))
    ),
    sa_select(col(ConsentEvent.dedupe_key)).where(col(ConsentEvent.dedupe_key).in_(bindparam("keys", expanding=True))),
)

_KIND = {
    "consent.signup": EventKind.signup,
    "consent.confirm": EventKind.confirm,
    "consent.withdraw": EventKind.withdraw,
}


def _last_expiry(history: list[Step]) -> datetime | None:
    """When the record last expired (an unconfirmed sign-up, or a confirmation that waited
    for its sign-up), or None."""
    return max((s.at for s in history if s.kind == EventKind.expire), default=None)


class ConsentStore:
    """Applies consent events of one chunk; records, their histories and dedupe keys are
    fetched up front. Records and events are plain rows written with Core at the chunk's
    end (``models.consent.write_records``), not ORM objects.

    ``deferring`` (intake's first pass): a confirmation without a sign-up raises NoSignup
    to be tried again after the file's other lines; on the last pass it is kept, its record
    ``awaiting_signup``, for a sign-up in a later file or request (reported ``pending``).
    """

    def __init__(self, session: Session, key: bytes, subjects: SubjectIndex):
        self.session, self.key, self.subjects = session, key, subjects
        self.consents: dict[tuple[uuid.UUID, str], Record] = {}
        self.history: dict[uuid.UUID, list[Step]] = {}
        self.events: list[tuple] = []  # consent_event rows of the chunk
        self.changed: dict[uuid.UUID, Record] = {}  # records of the chunk to write
        self.seen: set[str] = set()
        self.keys: dict[int, str] = {}
        self.seq = 0
        # The clock, read once per chunk (a chunk is one transaction): the time the chunk's
        # events are recorded and its records updated at.
        self.now = utcnow()
        self.deferring = True
        # Registered policy versions seen so far: a registered version stays registered.
        self.versions: set[str] = set()
        subjects.on_revive.append(self._keep_cut)

    def begin_chunk(self, events: Iterable[ConsentIntakeEvent], found_ids: set[uuid.UUID]) -> None:
        """Dedupe keys of the chunk's events, which of them were seen, and the records (with
        their histories) of the subjects found for the chunk."""
        events = list(events)
        self.now = utcnow()
        # One query per chunk at most, for the versions not met before.
        wanted = {e.policy_version for e in events if isinstance(e, ConsentSignup)} - self.versions
        if wanted:
            self.versions |= known_versions(self.session, wanted)
        # The key of a line is that of its model's JSON (``model_dump_json(by_alias=True)``),
        # here as the serialiser's bytes.
        self.keys = {id(e): content_key(self.key, e.__pydantic_serializer__.to_json(e, by_alias=True)) for e in events}
        keys = list(self.keys.values())
        # Lines stored before, and lines kept as a receipt only (erased subjects), in one
        # statement whose key list is bound at execution (a literal IN list is built anew,
        # value by value, every chunk). The receipts this transaction added are flushed.
        self.seen = set()
        if keys:
            self.session.flush()
            self.seen.update(self.session.connection().execute(_SEEN, {"keys": keys}).scalars())
        if found_ids:
            loaded = load_records(self.session, found_ids)
            for record in loaded:
                self.consents[(record.subject_id, record.list_name)] = record
            self._load_history([r.id for r in loaded if r.id not in self.history])
        self.seq = next_seq(self.session, "consent", len(events)) if events else 0

    def _load_history(self, ids: list[uuid.UUID]) -> None:
        for consent_id in ids:
            self.history[consent_id] = []
        columns = (
            ConsentEvent.consent_id,
            ConsentEvent.kind,
            ConsentEvent.at,
            ConsentEvent.dedupe_key,
            ConsentEvent.ip,
            ConsentEvent.channel,
            ConsentEvent.source,
            ConsentEvent.policy_version,
        )
        for start in range(0, len(ids), 1000):
            rows = self.session.connection().execute(
                select(*columns).where(col(ConsentEvent.consent_id).in_(ids[start : start + 1000]))  # type: ignore[call-overload]  # sqlmodel's select is typed for at most 4 columns
            )
            for consent_id, *step in rows:
                self.history[consent_id].append(Step(*step))

    def apply(self, event: ConsentIntakeEvent) -> Applied:
        """The line's outcome, audit event and reason; raises TransitionError to reject."""
        key = self.keys[id(event)]
        seq, self.seq = self.seq, self.seq + 1
        is_signup = isinstance(event, ConsentSignup)
        if isinstance(event, ConsentSignup) and event.policy_version not in self.versions:
            raise UnknownVersion(UNKNOWN_VERSION)
        if key in self.seen:
            return _DUPLICATE
        # From the model's __dict__: getattr on a field the model lacks (a confirmation's
        # insurance number) goes through pydantic's __getattr__ and an AttributeError.
        kvnr = event.__dict__.get("insurance_number")
        subject = self.subjects.find(event.email, kvnr, event.at)
        is_confirm = isinstance(event, ConsentConfirm)
        if erased_before(subject, event.at):
            assert subject is not None and subject.erased_at is not None
            return self._receipt(
                event,
                key,
                subject,
                "erased",
                erased_reason(subject.erased_at),
            )
        if subject is not None and subject.erased_at is not None and is_confirm:
            if self.deferring:  # the person's new sign-up may be further down the file
                raise NoSignup("no sign-up to confirm for this list")
            # Kept as a receipt only: it never confirms a sign-up that arrives later.
            return self._receipt(
                event,
                key,
                subject,
                "erased",
                ("this person's data was erased; a confirmation needs a new sign-up first"),
            )
        record = self.consents.get((subject.id, event.list_name)) if subject else None
        if record is None and is_confirm and self.deferring:  # its sign-up may be further down
            raise NoSignup("no sign-up to confirm for this list")
        if subject is None:
            # A withdrawal from someone unknown is kept under the pseudonym of the address only.
            subject = self.subjects.create(event.email, kvnr, identified=is_signup)
        if record is None:
            record = Record.new(subject.id, event.list_name, event.at, self.now)
            self.consents[(subject.id, event.list_name)] = record
            self.history[record.id] = []
            self.changed[record.id] = record
        history = self.history[record.id]
        cut = cut_of(history, subject.erased_at) if history or subject.erased_at is not None else None
        before = replay(history, cut)
        step = self._step(event, key, history, cut)
        history.append(step)
        self.events.append(step.row(record.id, self.now))
        self.seen.add(key)
        if isinstance(event, ConsentSignup) and (cut is None or step.at > cut):
            # New data the person gave: identifiers fill what is missing (and bring an erased
            # person back). The names are those of their newest sign-up by event time,
            # whichever list and whether it changed the consent or not, so the subject row
            # ends the same whatever order the sign-ups arrive in.
            self.subjects.identify(subject, event.email, kvnr)
            if self._newest_signup(subject, step, event.list_name):
                self.subjects.name(subject, event.salutation, event.first_name, event.last_name)
        after = replay(history, cut)
        if after.state is None:
            # Confirmations only: the sign-up comes in a later file or request. Kept in the
            # history, where the replay applies it once the sign-up arrives; it expires like
            # an unconfirmed sign-up, counted from the first confirmation since the last
            # expiry (a record's expiry is keyed by that time).
            expired = _last_expiry(history)
            since = min(
                (s.at for s in history if s.kind == EventKind.confirm and (expired is None or s.at > expired)),
                default=None,
            )
            if since is None:
                assert expired is not None
                return Applied(
                    "unchanged",
                    reason=f"no sign-up for this list; the confirmations waiting for one expired at {describe_time(expired)}",
                )
            record.state = ConsentState.awaiting_signup
            record.signup_at = since
            self.changed[record.id] = record
            return Applied(
                "pending",
                AuditEvent(
                    "intake.pending", "kept", subject=subject.pseudonym, detail=f"{event.type} list={event.list_name}"
                ),
                reason="no sign-up for this list yet: kept, and applied when it arrives",
            )
        if after == before:
            return self._unchanged(event, step, before, cut, subject)
        if after.signup_at is None:
            # Withdrawals only, no sign-up known: kept for a sign-up dated earlier that may
            # still arrive; nothing went anywhere, so no change number.
            settle(record, after, None, self.now)
            self.changed[record.id] = record
            if subject.erased_at is not None:
                return ignored(
                    event.type,
                    "erased",
                    "this person's data was erased; nothing to withdraw",
                    subject.pseudonym,
                    f"list={event.list_name}",
                )
            return Applied("unchanged", reason="no sign-up for this list; the withdrawal is kept")
        settle(record, after, seq, self.now)
        self.changed[record.id] = record
        audit = AuditEvent(
            f"consent.{step.kind}",
            "recorded",
            subject=subject.pseudonym,
            detail=f"list={event.list_name}",
        )
        return Applied("stored", audit)

    def _newest_signup(self, subject: Subject, step: Step, list_of_step: str) -> bool:
        """Whether no sign-up of the subject since its last erasure, on any list, is dated
        after `step`. At the same instant on the step's own list the one with the greater key
        counts, as in the replay (``models.consent.replay``): the names follow the sign-up
        whose proof the record keeps, whichever arrived last. On another list at the same
        instant, the one that arrives last counts."""
        for list_name in _LISTS:
            record = self.consents.get((subject.id, list_name))
            history = self.history.get(record.id) if record is not None else None
            if not history:
                continue
            same = list_name == list_of_step
            # The erasure cut only matters for a later sign-up, which is rare: looked for first.
            later = [
                s.at
                for s in history
                if s.kind == EventKind.signup and (s.at > step.at or (same and s.at == step.at and s.key > step.key))
            ]
            if later:
                cut = cut_of(history)
                if cut is None or max(later) > cut:
                    return False
        return True

    def _step(self, event: ConsentIntakeEvent, key: str, history: list[Step], cut) -> Step:
        """The line as a step of the history; without personal data where the proof it
        would belong to is gone (dated at or before an erasure or an expiry)."""
        # The fields from the model's __dict__: getattr on a field the model lacks goes
        # through pydantic's __getattr__ and an AttributeError: half of building the step.
        fields = event.__dict__
        step = Step(
            _KIND[event.type],
            event.at,
            key,
            ip=fields.get("ip"),
            channel=fields.get("channel"),
            source=fields.get("source"),
            policy_version=fields.get("policy_version"),
        )
        expired = _last_expiry(history) if history else None
        if (cut is not None and step.at <= cut) or (expired is not None and step.at <= expired):
            return step.without_personal_data()
        return step

    def _unchanged(self, event: ConsentIntakeEvent, step: Step, before: Decision, cut, subject: Subject) -> Applied:
        detail = f"list={event.list_name}"
        if cut is not None and step.at <= cut:
            return ignored(event.type, "erased", erased_reason(cut), subject.pseudonym, detail)
        if subject.erased_at is not None or before.state == ENDED:
            what = "nothing to withdraw" if step.kind == EventKind.withdraw else "a new sign-up is needed"
            return ignored(event.type, "erased", f"this person's data was erased; {what}", subject.pseudonym, detail)
        state = before.state or "not signed up"
        since = f" at {describe_time(before.since)}" if before.since else ""
        if before.decided is not None and step.order < before.decided.order:
            if step.at == before.decided.at and step.kind == before.decided.kind:
                # Two of a kind at one instant: the replay takes one by key, whatever the order.
                reason = f"the same instant as the current decision ({state}{since}), which counts"
            else:
                reason = f"older than the current decision ({state}{since})"
            return ignored(event.type, "stale", reason, subject.pseudonym, detail)
        if step.kind == EventKind.confirm and state != ConsentState.confirmed:
            return Applied("unchanged", reason=f"the sign-up is {state}{since}; a new sign-up is needed")
        return Applied("unchanged", reason=f"already {state}{since}")

    def _receipt(self, event: ConsentIntakeEvent, key: str, subject: Subject, why: str, reason: str) -> Applied:
        """A line of an erased person kept as a receipt only: recognised when it comes again,
        and holding nothing of theirs."""
        self.seen.add(key)
        self.session.add(IntakeReceipt(dedupe_key=key, kind=event.type, received_at=event.at))
        return ignored(event.type, why, reason, subject.pseudonym, f"list={event.list_name}")

    def _keep_cut(self, subject: Subject) -> None:
        """Before an erased subject comes back: the erasure goes into each of its records'
        histories, as the subject row will no longer say when it was."""
        erased_at = subject.erased_at
        assert erased_at is not None
        for list_name in _LISTS:
            record = self.consents.get((subject.id, list_name))
            if record is None:
                continue
            history = self.history.setdefault(record.id, [])
            step = Step(EventKind.erase, erased_at, event_key(self.key, "erase", record.id, erased_at.isoformat()))
            if all(s.key != step.key for s in history):
                history.append(step)
                self.events.append(step.row(record.id, self.now))

    def end_chunk(self) -> None:
        """Write the chunk's records and events, after its new subjects (the ORM's flush)."""
        self.session.flush()
        write_records(self.session, self.changed.values())
        self.changed.clear()
        insert_events(self.session, self.events)
        self.events.clear()
