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
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from pathlib import Path

from sqlmodel import Field, Session, SQLModel, col, select

from models.db import insert_many, insert_missing
from models.types import UTCDateTime, classify, utcnow

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


classify(
    AuditEntry,
    pseudonymous=["subject_pseudonym"],
    not_personal=[
        "id",
        "at",
        "flow_run_id",
        "action",
        "processor",
        "outcome",
        "attempts",
        "http_status",
        "detail",
        "prev_hash",
        "hash",
    ],
)


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


classify(AuditHead, not_personal=["id", "last_id", "last_hash", "seal"])


_INSERT_ENTRY = AuditEntry.__table__.insert()  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
_ENTRY_COLUMNS = (
    "id",
    "action",
    "processor",
    "subject_pseudonym",
    "outcome",
    "attempts",
    "http_status",
    "detail",
    "prev_hash",
    "hash",
)


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
    "id",
    "at",
    "flow_run_id",
    "action",
    "processor",
    "subject_pseudonym",
    "outcome",
    "attempts",
    "http_status",
    "detail",
)


def _digest(key: bytes, prev_hash: str, row: dict) -> str:
    content = {name: row[name] for name in FIELDS}
    # In UTC, as append wrote it: PostgreSQL hands timestamptz back in the session's zone.
    content["at"] = row["at"].astimezone(UTC).isoformat()
    payload = prev_hash + json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


class _Chainer:
    """``_digest`` for many rows of one append: the same bytes, built without a dict per row.

    ``json.dumps(content, sort_keys=True, separators=(",", ":"))`` of a flat dict is its keys
    in sorted order with each value encoded alone, so the encoded values are cached (most
    repeat within an append) and joined around the two that change per row, id and subject.
    """

    # FIELDS in sorted order, as sort_keys writes them.
    _ORDER = tuple(sorted(FIELDS))

    def __init__(self, key: bytes, at: datetime, flow_run_id: str | None):
        # HMAC (RFC 2104) with the key's two padded blocks hashed once: a row then costs two
        # copies of a hash state instead of the key schedule each time.
        block = key if len(key) <= 64 else hashlib.sha256(key).digest()
        block = block.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self.at, self.flow_run_id = at, flow_run_id
        self._encoded: dict[object, str] = {}
        self._frames: dict[tuple, tuple[str, str]] = {}

    def _enc(self, value: object) -> str:
        # Keyed by type too: True == 1 and hashes alike, but json writes them differently.
        memo = (type(value), value)
        text = self._encoded.get(memo)
        if text is None:
            text = self._encoded[memo] = json.dumps(value)
        return text

    def _frame(self, event: AuditEvent) -> tuple[str, str]:
        """The payload around id and subject: (text before the id, text between id and subject)."""
        memo = (event.action, event.attempts, event.detail, event.http_status, event.outcome, event.processor)
        frame = self._frames.get(memo)
        if frame is None:
            values = {
                "action": event.action,
                "at": self.at.isoformat(),
                "attempts": event.attempts,
                "detail": event.detail,
                "flow_run_id": self.flow_run_id,
                "http_status": event.http_status,
                "outcome": event.outcome,
                "processor": event.processor,
            }
            parts = {name: f'"{name}":{self._enc(values[name])}' for name in values}
            cut = self._ORDER.index("id")
            before = ",".join(parts[n] for n in self._ORDER[:cut])
            between = ",".join(parts[n] for n in self._ORDER[cut + 1 : -1])
            frame = ("{" + before + ',"id":', "," + between + ',"subject_pseudonym":')
            self._frames[memo] = frame
        return frame

    def digest(self, prev_hash: str, row_id: int, event: AuditEvent) -> str:
        before, between = self._frame(event)
        subject = event.subject
        # What json.dumps does with a str (ensure_ascii), without its dispatch; the pseudonym
        # differs per row, so caching it would only fill the cache.
        text = encode_basestring_ascii(subject) if type(subject) is str else self._enc(subject)
        inner = self._inner.copy()
        inner.update(f"{prev_hash}{before}{row_id}{between}{text}}}".encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


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
    head = session.get(AuditHead, 1, with_for_update=True)
    if head is None:  # the first append ever; two at once must not both insert the head
        insert_missing(session, AuditHead, id=1)
        head = session.get(AuditHead, 1, with_for_update=True)
        assert head is not None
    chainer = _Chainer(key, at, flow_run_id)
    rows = []
    last_id, last_hash = head.last_id, head.last_hash
    checked: set[str] = {""}  # details already found free of e-mail addresses
    for event in events:
        if event.detail not in checked:
            if _EMAIL_LIKE.search(event.detail):
                raise ValueError("audit detail must not contain personal data")
            checked.add(event.detail)
        last_id += 1
        digest = chainer.digest(last_hash, last_id, event)
        rows.append(
            (
                last_id,
                event.action,
                event.processor,
                event.subject,
                event.outcome,
                event.attempts,
                event.http_status,
                event.detail,
                last_hash,
                digest,
            )
        )
        last_hash = digest
    if rows:
        same = {"at": at, "flow_run_id": flow_run_id}
        insert_many(session, _INSERT_ENTRY, _ENTRY_COLUMNS, rows, same)
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
        if row.id < expected_id:  # only before the first: ids start at 1
            return Verification(False, checked, row.id, "row inserted before the first")
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
        if head.last_id < checked:
            # More rows than the head vouches for (the head moved back, or an old one put
            # back): the first row it does not cover is the first one not to trust.
            sealed = max(head.last_id, 0)
            return Verification(False, sealed, sealed + 1, "rows after the sealed end")
        return Verification(False, checked, checked + 1, "rows removed from the end")
    return Verification(True, checked)


def _iter_rows(session: Session, chunk: int) -> Iterator[AuditEntry]:
    # From the lowest id there is, not from 1: a row forged with id 0 or below must show.
    query = select(AuditEntry).order_by(col(AuditEntry.id)).limit(chunk)
    rows = session.exec(query).all()
    while rows:
        yield from rows
        rows = session.exec(query.where(AuditEntry.id > rows[-1].id)).all()


def export_rows(session: Session) -> Iterator[dict]:
    """Every row as a plain dict (times as ISO 8601), oldest first."""
    for row in _iter_rows(session, 5000):
        data = row.model_dump()
        data["at"] = row.at.astimezone(UTC).isoformat()
        yield {name: data[name] for name in (*FIELDS, "prev_hash", "hash")}


# the anchor outside the database ----------------------------------------------------------
# The head row vouches for the trail's end only as long as nobody rewrites the database: a
# wiped trail, or one truncated with an older head (sealed for that length) put back, reads
# as a younger, intact trail. After each flow run the head is also written somewhere the
# database's owner cannot rewrite (``PSYNC_AUDIT_ANCHOR``: a file on other storage, append-
# only JSON lines; optionally a Prefect artifact too), and ``verify_against`` compares.


@dataclass(frozen=True)
class Anchor:
    """The trail's head as seen at the end of a run: how many rows, the last row's hash."""

    rows: int
    last_hash: str
    at: datetime
    flow_run_id: str | None = None
    mac: str = ""

    def _content(self) -> str:
        return f"anchor|{self.rows}|{self.last_hash}|{self.at.astimezone(UTC).isoformat()}|{self.flow_run_id or ''}"

    def sealed(self, key: bytes) -> Anchor:
        mac = hmac.new(key, self._content().encode(), hashlib.sha256).hexdigest()
        return Anchor(self.rows, self.last_hash, self.at, self.flow_run_id, mac)

    def valid(self, key: bytes) -> bool:
        """True when the anchor was written with `key` (a forged line needs the key too)."""
        return hmac.compare_digest(self.mac, self.sealed(key).mac)

    def to_json(self) -> str:
        return json.dumps(
            {
                "at": self.at.astimezone(UTC).isoformat(),
                "rows": self.rows,
                "last_hash": self.last_hash,
                "flow_run_id": self.flow_run_id,
                "mac": self.mac,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, line: str) -> Anchor:
        """ValueError when the line is not an anchor."""
        try:
            data = json.loads(line)
            return cls(
                int(data["rows"]),
                str(data["last_hash"]),
                datetime.fromisoformat(data["at"]),
                data.get("flow_run_id"),
                str(data["mac"]),
            )
        except (ValueError, KeyError, TypeError):
            raise ValueError("not an audit anchor line") from None


def current_anchor(session: Session, key: bytes, flow_run_id: str | None = None, now: datetime | None = None) -> Anchor:
    """The head as it stands now, sealed with `key` (read only: the head is not locked)."""
    head = session.get(AuditHead, 1)
    rows, last_hash = (head.last_id, head.last_hash) if head is not None else (0, GENESIS)
    return Anchor(rows, last_hash, (now or utcnow()).astimezone(UTC), flow_run_id).sealed(key)


def append_anchor(path: str | os.PathLike, anchor: Anchor) -> None:
    """Append the anchor to the file as one JSON line, on disk before returning (fsync).

    Opened for appending only (O_APPEND), so a line is never written over an older one.
    """
    line = (anchor.to_json() + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def latest_anchor(path: str | os.PathLike, key: bytes) -> Anchor | None:
    """The anchor vouching for the most rows in the file (None: no file, or no line yet).

    The most rows, not the last line: two runs ending at once may append out of order.
    ValueError when a line is not an anchor or not sealed with `key` (the file was edited).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    best: Anchor | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            anchor = Anchor.from_json(line)
        except ValueError:
            raise ValueError(f"audit anchor line {number} is not an anchor") from None
        if not anchor.valid(key):
            raise ValueError(f"audit anchor line {number} is not sealed with this key")
        if best is None or anchor.rows >= best.rows:
            best = anchor
    return best


# What a comparison with the anchor can find; the reasons name the tampering.
WIPED = "trail wiped"
HEAD_MISSING = "head missing"
TRUNCATED = "truncated, an older head put back"
REWRITTEN = "anchored row rewritten"


def verify_against(session: Session, key: bytes, anchor: Anchor | None, chunk: int = 5000) -> Verification:
    """``verify``, then the trail against the anchor: it must hold at least the anchored
    rows, the last anchored one with the anchored hash.

    Named findings: ``WIPED`` (no rows left where the anchor vouches for some),
    ``HEAD_MISSING`` (rows but no head), ``TRUNCATED`` (a chain that is intact and sealed,
    but shorter than the anchor: rows removed and an older head put back), ``REWRITTEN``
    (the anchored row no longer has its hash: the chain was rebuilt). Without an anchor,
    ``verify`` alone.
    """
    head = session.get(AuditHead, 1)
    first = session.exec(select(col(AuditEntry.id)).order_by(col(AuditEntry.id)).limit(1)).first()
    if anchor is not None and anchor.rows > 0 and first is None:
        return Verification(False, 0, 1, f"{WIPED}: no rows, the anchor of {_when(anchor)} vouches for {anchor.rows}")
    if head is None and first is not None:
        return Verification(False, 0, None, f"{HEAD_MISSING}: the audit_head row was deleted")
    result = verify(session, key, chunk)
    if not result.ok or anchor is None:
        return result
    if result.checked < anchor.rows:
        return Verification(
            False,
            result.checked,
            result.checked + 1,
            f"{TRUNCATED}: the trail ends at row {result.checked}, the anchor of {_when(anchor)} "
            f"vouches for {anchor.rows}",
        )
    if anchor.rows > 0:
        row = session.get(AuditEntry, anchor.rows)
        if row is None or not hmac.compare_digest(row.hash, anchor.last_hash):
            return Verification(
                False,
                result.checked,
                anchor.rows,
                f"{REWRITTEN}: row {anchor.rows} differs from the anchor of {_when(anchor)}",
            )
    return result


def _when(anchor: Anchor) -> str:
    return anchor.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
