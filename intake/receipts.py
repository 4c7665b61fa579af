"""Applying intake lines against their receipts (``models.receipts.IntakeReceipt``).

Booking and later event types leave a receipt per applied line, so feeding the same file
twice changes nothing the second time (a re-sent reschedule is not applied again after a
later one).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from sqlmodel import Session, SQLModel, col, select

from intake.types import Applied
from models.audit import AuditEvent
from models.consent import describe_time
from models.cursors import next_seq
from models.receipts import IntakeReceipt, PendingLine, seen
from models.subject_index import SubjectIndex
from models.subjects import DataSubject
from models.types import event_key, utcnow


class ReceiptStore:
    """Applies one job's events, a chunk at a time: its records fetched by their reference
    up front, the next numbers of its change counter reserved, and a receipt per applied line
    so the same line a second time is a duplicate.

    A line of a `pending_kinds` type naming a record not known even after its whole file
    (the record comes in a later file or request) is kept (``keep``, ``PendingLine``) and
    applied once a chunk brings the record (``take_pending``): the order files arrive in
    changes nothing.

    Subclasses name the table, its reference column and counter, and implement ``_apply``.
    """

    table: type[SQLModel]
    ref_column: str
    counter: str
    pending_kinds: frozenset[str] = frozenset()

    def __init__(self, session: Session, key: bytes, subjects: SubjectIndex):
        self.session, self.key, self.subjects = session, key, subjects
        self.records: dict[str, SQLModel] = {}
        self.pseudonyms: dict[uuid.UUID, str] = {}
        self.keys: dict[int, str] = {}
        self.seen: set[str] = set()
        self.seq = 0
        self.created: set[str] = set()  # references of the records this chunk made

    @staticmethod
    def ref_of(event) -> str:
        raise NotImplementedError

    def key_of(self, event) -> str:
        return event_key(self.key, event.model_dump_json())

    def begin_chunk(self, events: Iterable) -> None:
        events = list(events)
        self.created = set()
        self.keys = {id(e): self.key_of(e) for e in events}
        self.seen = seen(self.session, self.keys.values())
        refs = {self.ref_of(e) for e in events} - self.records.keys()
        if refs:
            column = getattr(self.table, self.ref_column)
            rows = self.session.exec(
                select(self.table, DataSubject.pseudonym)
                .join(DataSubject, DataSubject.id == self.table.subject_id)  # type: ignore[attr-defined]  # each store's table has one
                .where(column.in_(refs))
            )
            for record, pseudonym in rows:
                self.remember(record, pseudonym)
        self.seq = next_seq(self.session, self.counter, len(events)) if events else 0

    def remember(self, record, pseudonym: str) -> None:
        self.records[getattr(record, self.ref_column)] = record
        self.pseudonyms[record.subject_id] = pseudonym

    def apply(self, event) -> Applied:
        """The line's outcome, audit event and reason; a subclass raises ValueError to reject
        (NotYetKnown when the record it names is not known yet)."""
        seq, self.seq = self.seq, self.seq + 1
        key = self.keys[id(event)]
        if key in self.seen:
            return Applied("duplicate")
        ref = self.ref_of(event)
        record = self.records.get(ref)
        applied = self._apply(event, record, seq)
        if record is None and ref in self.records:
            self.created.add(ref)
        # Only an applied line makes a later identical one a duplicate; one ignored as stale
        # or erased counts as applied (it is recorded), so importing it again is a duplicate.
        self.seen.add(key)
        self.session.add(IntakeReceipt(dedupe_key=key, kind=event.type, received_at=event.at))
        return applied

    def _apply(self, event, record, seq: int) -> Applied:
        raise NotImplementedError

    def keep(self, event) -> bool:
        """Keep a line naming a record not known yet, for when it arrives; False for a type
        this store does not keep (the line is rejected). Kept once, however often it comes."""
        if event.type not in self.pending_kinds:
            return False
        key = self.keys[id(event)]
        if self.session.get(PendingLine, key) is None:
            line = event.model_dump_json(by_alias=True)
            self.session.add(
                PendingLine(
                    dedupe_key=key,
                    kind=event.type,
                    ref=self.ref_of(event),
                    at=event.at,
                    line=line,
                    received_at=utcnow(),
                )
            )
        return True

    def take_pending(self, parse: Callable[[str], Any]) -> list:
        """The kept lines naming the records this chunk made, parsed with `parse`, removed
        from the keep and made ready to apply (the caller applies them, in event-time order)."""
        if not self.pending_kinds or not self.created:
            return []
        rows = list(
            self.session.exec(
                select(PendingLine).where(
                    col(PendingLine.ref).in_(sorted(self.created)),
                    col(PendingLine.kind).in_(sorted(self.pending_kinds)),
                )
            )
        )
        if not rows:
            return []
        events = []
        for row in rows:
            events.append(parse(row.line))
            self.session.delete(row)
        self.keys.update({id(e): self.key_of(e) for e in events})
        self.seen |= seen(self.session, (self.keys[id(e)] for e in events))
        self.seq = next_seq(self.session, self.counter, len(events))
        return events

    def end_chunk(self) -> None:
        self.session.flush()


def erased_reason(erased_at: datetime) -> str:
    """Why a line dated before its person's erasure restores nothing (names no one)."""
    return f"dated before this person's data was erased ({describe_time(erased_at)}); nothing restored"


def ignored(event_type: str, why: str, reason: str, pseudonym: str | None, detail: str = "") -> Applied:
    """A line recorded and left without effect, with its reason and an audit row.

    `why` is the audit outcome: ``stale`` (older than the decision it would override) or
    ``erased`` (the person's data was erased; the line restores nothing).
    """
    text = f"{event_type} {detail}: {reason}" if detail else f"{event_type}: {reason}"
    return Applied("unchanged", AuditEvent("intake.ignored", why, subject=pseudonym, detail=text), reason)
