"""The audit trail: append-only, hash-chained, free of personal data.

Every decision a flow takes and every call it makes to a processor becomes one row. Each row
carries a keyed HMAC over its own content and the previous row's hash, and ``audit_head``
holds the last id and hash, so altering, removing or appending behind our back breaks the
chain at a row ``verify`` can name. Subjects appear only as pseudonyms.

Example::

    with transaction() as session:
        append(session, key, [AuditEvent("consent.push", "ok", processor="cleverreach",
                                         subject="3f2a…", attempts=1, http_status=200)])
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import insert
from sqlmodel import Field, Session, SQLModel, select

from models.types import UTCDateTime, utcnow

GENESIS = "0" * 64
# Defence in depth: a detail that looks like it holds an e-mail address is refused.
_EMAIL_LIKE = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit_entry"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    at: datetime = Field(sa_type=UTCDateTime, index=True)
    flow_run_id: str | None = Field(default=None, max_length=64)
    action: str = Field(max_length=80)
    processor: str | None = Field(default=None, max_length=40)
    subject_pseudonym: str | None = Field(default=None, max_length=32, index=True)
    outcome: str = Field(max_length=20)
    attempts: int | None = None
    http_status: int | None = None
    detail: str = Field(default="", max_length=1000)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditHead(SQLModel, table=True):
    """The chain's end: without it, deleting the newest rows would go unnoticed.

    `seal` is a keyed HMAC of (last_id, last_hash), so the end cannot be moved back to an
    earlier row without the key either.
    """

    __tablename__ = "audit_head"

    id: int = Field(default=1, primary_key=True)
    last_id: int = 0
    last_hash: str = Field(default=GENESIS, max_length=64)
    seal: str = Field(default="", max_length=64)


def _seal(key: bytes, last_id: int, last_hash: str) -> str:
    return hmac.new(key, f"head|{last_id}|{last_hash}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class AuditEvent:
    action: str
    outcome: str
    processor: str | None = None
    subject: str | None = None  # a pseudonym, never an identifier
    attempts: int | None = None
    http_status: int | None = None
    detail: str = ""


FIELDS = (
    "id", "at", "flow_run_id", "action", "processor", "subject_pseudonym",
    "outcome", "attempts", "http_status", "detail",
)  # fmt: skip


def _digest(key: bytes, prev_hash: str, row: dict) -> str:
    content = {name: row[name] for name in FIELDS}
    content["at"] = row["at"].isoformat()
    payload = prev_hash + json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def append(
    session: Session,
    key: bytes,
    events: Iterable[AuditEvent],
    flow_run_id: str | None = None,
    now: datetime | None = None,
) -> int:
    """Append events in order, chained to the current head; returns how many.

    Takes the head row FOR UPDATE, so concurrent writers on PostgreSQL queue instead of
    forking the chain (SQLite serialises write transactions already). Does not commit.
    """
    at = (now or utcnow()).astimezone(UTC)
    head = session.exec(select(AuditHead).where(AuditHead.id == 1).with_for_update()).first()
    if head is None:
        head = AuditHead()
        session.add(head)
    rows = []
    last_id, last_hash = head.last_id, head.last_hash
    for event in events:
        if _EMAIL_LIKE.search(event.detail):
            raise ValueError("audit detail must not contain personal data")
        last_id += 1
        row = {
            "id": last_id, "at": at, "flow_run_id": flow_run_id, "action": event.action,
            "processor": event.processor, "subject_pseudonym": event.subject,
            "outcome": event.outcome, "attempts": event.attempts,
            "http_status": event.http_status, "detail": event.detail,
        }  # fmt: skip
        row["prev_hash"] = last_hash
        row["hash"] = last_hash = _digest(key, last_hash, row)
        rows.append(row)
    if rows:
        session.execute(insert(AuditEntry), rows)
        head.last_id, head.last_hash = last_id, last_hash
        head.seal = _seal(key, last_id, last_hash)
        session.add(head)
    return len(rows)


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    bad_id: int | None = None
    reason: str = ""


def verify(session: Session, key: bytes, chunk: int = 5000) -> Verification:
    """Walk the chain from the first row; report the first row that does not fit."""
    expected_id, prev_hash, checked = 1, GENESIS, 0
    for row in _iter_rows(session, chunk):
        data = row.model_dump()
        if row.id != expected_id:
            return Verification(False, checked, expected_id, "row missing")
        if row.prev_hash != prev_hash:
            return Verification(False, checked, row.id, "chain broken before this row")
        if _digest(key, prev_hash, data) != row.hash:
            return Verification(False, checked, row.id, "row content altered")
        prev_hash, expected_id, checked = row.hash, expected_id + 1, checked + 1
    head = session.get(AuditHead, 1)
    if head is None:
        head = AuditHead(seal=_seal(key, 0, GENESIS))
    if (head.last_id, head.last_hash) != (checked, prev_hash) or not hmac.compare_digest(
        head.seal, _seal(key, head.last_id, head.last_hash)
    ):
        return Verification(False, checked, checked + 1, "rows removed from the end")
    return Verification(True, checked)


def _iter_rows(session: Session, chunk: int) -> Iterator[AuditEntry]:
    after = 0
    while True:
        rows = session.exec(
            select(AuditEntry).where(AuditEntry.id > after).order_by(AuditEntry.id).limit(chunk)
        ).all()
        if not rows:
            return
        yield from rows
        after = rows[-1].id


def export_rows(session: Session) -> Iterator[dict]:
    """Every row as a plain dict (times as ISO 8601), oldest first."""
    for row in _iter_rows(session, 5000):
        data = row.model_dump()
        data["at"] = row.at.isoformat()
        yield {name: data[name] for name in (*FIELDS, "prev_hash", "hash")}
