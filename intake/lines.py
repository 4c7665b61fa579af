"""Intake: the controller's website hands events over as JSON lines; this validates and applies.

Each line is validated on its own by the pydantic models of each job (the same models give
``psync intake --schema``). A rejected line is reported with its number and a reason that
never repeats the input, and changes nothing. Storing is idempotent: a line applied before
is a duplicate.

Lines count by their time (``at``), not their place in the file or the order files arrive
in: each store applies an event by event time, records one that is older than the decision
it would override and reports it ``unchanged`` with the reason. A line that names a
sign-up, booking or order not known yet (``NotYetKnown``) is tried again after the file's
other lines, in event-time order, and only then rejected.

Intake writes no audit row itself (flows are the one audit writer): ``apply_lines`` returns
the lines' results and the audit events, and the caller writes those in the same
transaction (``flows.intake.intake_lines`` does both).

Example::

    with transaction() as session:
        applied = apply_lines(session, key, open("events.jsonl", "rb"), now=utcnow())
        write_audit(session, applied.audit)
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NamedTuple, cast

from pydantic import Field, TypeAdapter, ValidationError
from sqlmodel import Session

from intake.booking import (
    BookingCancel,
    BookingRejected,
    BookingRequest,
    BookingReschedule,
    BookingStore,
)
from intake.consent import ConsentConfirm, ConsentSignup, ConsentStore, ConsentWithdraw
from intake.erasure import ErasureRejected, ErasureRequestEvent, ErasureStore
from intake.ident import CallNote, HeldStore, IdentCase
from intake.isic import IsicCancel, IsicOrderEvent, IsicStore, OrderRejected
from intake.receipts import ReceiptStore
from intake.rights import RightsRejected, RightsRequestEvent, RightsStore
from intake.types import EMAIL_CACHE, EMAIL_DOMAINS, FIELD_NAME, LENIENT, NotYetKnown
from models.audit import AuditEvent
from models.consent import TransitionError
from models.documents import DocumentCipher
from models.identity import KnownDomains
from models.subject_index import SubjectIndex, SubjectMismatch

# A website clock a little ahead of ours is fine; a day ahead is a bug upstream.
FUTURE_TOLERANCE = timedelta(minutes=5)
# Lines a chunk of a file holds (each chunk one transaction). A chunk's rows land on random
# pages of the consent, subject and audit indexes, each written to the WAL once per commit:
# at 1,000 lines nearly every row dirtied a page of its own (28 ms a commit, 30% of an
# intake); 5,000 lines share them five times better, for about 50 MB more at the peak.
CHUNK = 5000
# A chunk of a file imported chunk by chunk closes early once its documents reach this.
CHUNK_DOCUMENT_BYTES = 256 * 1024 * 1024
REJECTIONS = (TransitionError, SubjectMismatch, BookingRejected, OrderRejected, ErasureRejected, RightsRejected)
# Order of the lines tried again at the same instant: the first step of each job first.
_RANK = {
    "consent.signup": 0,
    "consent.confirm": 1,
    "consent.withdraw": 2,
    "booking.request": 0,
    "booking.reschedule": 1,
    "booking.cancel": 2,
    "isic.order": 0,
    "isic.cancel": 1,
}

IntakeEvent = Annotated[
    ConsentSignup
    | ConsentConfirm
    | ConsentWithdraw
    | BookingRequest
    | BookingReschedule
    | BookingCancel
    | IsicOrderEvent
    | IsicCancel
    | ErasureRequestEvent
    | RightsRequestEvent
    | IdentCase
    | CallNote,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[IntakeEvent] = TypeAdapter(IntakeEvent)


def json_schema() -> dict:
    """The JSON Schema of one intake line."""
    return EVENT_ADAPTER.json_schema(by_alias=True)


# Every outcome a line can have, in the order summaries list them (the CLI, the HTTP door).
OUTCOMES = ("stored", "unchanged", "duplicate", "rejected", "pending")


@dataclass(frozen=True, slots=True)
class LineResult:
    line: int
    outcome: str  # stored | duplicate | unchanged | pending | rejected
    reason: str = ""  # why, for rejected and unchanged lines (a stored one's caveat); never personal data


class Intake(NamedTuple):
    """What intake made of some lines: one result per non-blank line, by line number, and
    the audit events the caller writes in the same transaction."""

    results: list[LineResult]
    audit: list[AuditEvent]


def describe(exc: ValidationError) -> str:
    """A reason per failed field, without ever quoting the input."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        # Only what looks like a field name goes into the path: the discriminator's tag
        # ("consent.signup") and pydantic's schema steps are noise, and an unknown key is
        # input like any other (an e-mail address, a line break).
        loc = ".".join(str(p) for p in error["loc"] if isinstance(p, int) or FIELD_NAME.fullmatch(p))
        msg = error["msg"].removeprefix("Value error, ")
        if error["type"] == "union_tag_invalid":  # pydantic's message quotes the tag
            loc, msg = "type", f"not a known event type; expected {error['ctx']['expected_tags']}"
        elif error["type"] == "extra_forbidden" and not FIELD_NAME.fullmatch(str(error["loc"][-1])):
            msg = "Extra inputs are not permitted (a field whose name is not shown)"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


class DuplicateKey(ValueError):
    """A JSON object names one key twice: which value was meant is a guess (Python keeps the
    last, other parsers the first), so the input is refused instead."""

    def __init__(self) -> None:
        super().__init__("a field appears twice in one object")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise DuplicateKey()
    return found


_STRICT = json.JSONDecoder(object_pairs_hook=_unique_keys)


def loads_strict(text: str | bytes) -> Any:
    """``json.loads``, refusing an object that names a key twice (``DuplicateKey``, a
    ValueError like any other JSON error).

    >>> loads_strict('{"email": "a@example.de", "email": "b@example.de"}')
    Traceback (most recent call last):
    intake.lines.DuplicateKey: a field appears twice in one object
    """
    if isinstance(text, bytes):  # as json.loads reads bytes: UTF-8, -16 or -32, a BOM allowed
        text = text.decode(json.detect_encoding(text), "surrogatepass")
    return _STRICT.decode(text)


def parse_line(text: str, context: dict | None = None) -> IntakeEvent:
    """Validate one line; raises ValueError with a PII-free reason.

    `context` carries what some checks need: ``now``, the known ``service_points``, the
    ``base_dir`` that document paths are relative to and ``max_document_bytes``.
    """
    try:
        raw = loads_strict(text)
    except DuplicateKey as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    except (ValueError, RecursionError):  # also a number of 5,000 digits, or nesting too deep
        raise ValueError("not valid JSON") from None
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    try:
        return EVENT_ADAPTER.validate_python(raw, context=context)
    except ValidationError as exc:
        raise ValueError(describe(exc)) from None


Parsed = tuple[int, IntakeEvent]  # (line number, event)


class Refused(NamedTuple):
    """A line refused only by a check against the intake's clock or the disk (its start has
    passed, a document was removed since): rejected with `reason`, unless it was stored
    before, when it is a ``duplicate`` (so importing a file again, days later, reports what
    it stored as stored). `event` is the line's model without those checks: its dedupe key."""

    line: int
    event: IntakeEvent
    reason: str


def validation_context(
    now: datetime,
    service_points: Collection[str] = (),
    base_dir: Path | None = None,
    max_document_bytes: int = 10 * 1024 * 1024,
) -> dict[str, Any]:
    """What ``parse_line`` checks against: the intake's clock, the known service points, the
    folder document paths are relative to, and the largest document."""
    return {
        "now": now,
        "service_points": set(service_points),
        "base_dir": base_dir,
        "max_document_bytes": max_document_bytes,
        EMAIL_CACHE: {},
        EMAIL_DOMAINS: KnownDomains(),
    }


def parse_lines(lines: Iterable[str | bytes], context: dict[str, Any]) -> Iterator[LineResult | Parsed | Refused]:
    """Each non-blank line validated, in file order, as it is read: a rejection (with its
    line number and reason), the parsed event, or a line refused only by the clock or the
    disk (``Refused``: the store tells a rejection from a duplicate).

    Lines may be bytes (a file opened in binary mode): a line that is not UTF-8 is then
    rejected on its own instead of failing the whole file. A byte-order mark opening the
    file (Windows tools write one) is not part of its first line.
    """
    latest = context["now"] + FUTURE_TOLERANCE
    relaxed = {**context, LENIENT: True}
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            yield LineResult(number, "rejected", "not valid UTF-8")
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip():
            continue
        try:
            event = parse_line(text, context)
        except ValueError as exc:
            try:  # refused by the clock or the disk alone? Then it may have been stored before.
                yield Refused(number, parse_line(text, relaxed), str(exc))
            except ValueError:
                yield LineResult(number, "rejected", str(exc))
            continue
        if event.at > latest:
            yield LineResult(number, "rejected", "at: lies in the future")
            continue
        yield number, event


def document_bytes(event: IntakeEvent) -> int:
    """The bytes of the documents a line brings (read when it is stored)."""
    return sum(upload.size for upload in event._files.values()) if isinstance(event, IsicOrderEvent) else 0


def chunked(
    items: Iterable[LineResult | Parsed | Refused], lines: int = CHUNK, max_bytes: int = CHUNK_DOCUMENT_BYTES
) -> Iterator[list[LineResult | Parsed | Refused]]:
    """`items` in chunks of at most `lines` lines, a chunk closed early once its documents
    reach `max_bytes` (so a chunk of large uploads is committed, and its pages written, in
    reasonable steps)."""
    chunk: list[LineResult | Parsed | Refused] = []
    size = 0
    for item in items:
        chunk.append(item)
        if not isinstance(item, LineResult):
            size += document_bytes(item[1])
        if len(chunk) >= lines or size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def retry_order(later: list[Parsed]) -> list[Parsed]:
    """Lines deferred as ``NotYetKnown``, in the order they are tried again: by event time,
    the first step of each job first at the same instant (a confirmation above its sign-up,
    a cancellation above its booking; a reschedule before the cancellation that follows it)."""
    return sorted(later, key=lambda item: (item[1].at, _RANK.get(item[1].type, 0)))


class ChunkApplied(NamedTuple):
    """What applying a chunk gave: its results, its audit events, and the lines deferred
    because what they name is not known yet."""

    results: list[LineResult]
    audit: list[AuditEvent]
    later: list[Parsed]


class Applier:
    """The stores of one transaction: applies parsed lines a chunk at a time.

    Records found for one chunk are remembered for the next within the same transaction; a
    caller that commits each chunk makes a new Applier for each (the records are read again).
    """

    def __init__(self, session: Session, key: bytes, document_key: bytes | None = None):
        self.subjects = SubjectIndex(session, key)
        self.consents = ConsentStore(session, key, self.subjects)
        self.bookings = BookingStore(session, key, self.subjects)
        self.orders = IsicStore(session, key, self.subjects, DocumentCipher(document_key) if document_key else None)
        self.erasures = ErasureStore(session, key, self.subjects)
        self.held = HeldStore(session, key, self.subjects)
        self.rights = RightsStore(session, key, self.subjects, document_key)
        # A dispatch table by the event type's prefix; each store takes only its own events.
        self.stores: dict[str, Any] = {
            "consent": self.consents,
            "booking": self.bookings,
            "isic": self.orders,
            "erasure": self.erasures,
            "ident": self.held,
            "call": self.held,
            "rights": self.rights,
        }

    def _apply_pending(self, store: ReceiptStore) -> list[AuditEvent]:
        """Apply the kept lines naming the records `store` made in this chunk, by event time;
        their outcomes go to the audit trail (they are lines of an earlier input)."""
        audit: list[AuditEvent] = []
        for _, event in retry_order([(0, e) for e in store.take_pending(_parse_kept)]):
            ref = store.ref_of(event)
            try:
                applied = store.apply(event)
            except REJECTIONS as exc:
                audit.append(AuditEvent("intake.rejected", "rejected", detail=f"kept {event.type} {ref}: {exc}"))
                continue
            audit.append(AuditEvent("intake.pending", "applied", detail=f"kept {event.type} {ref}: {applied.outcome}"))
            if applied.audit is not None:
                audit.append(applied.audit)
        return audit

    def close(self) -> None:
        """Done with this transaction's stores: what they found and made goes by reference
        count as soon as the Applier does (``SubjectIndex.close``)."""
        self.subjects.close()

    def apply(self, items: Sequence[Parsed | Refused], defer: bool) -> ChunkApplied:
        """Apply `items`; with `defer`, a line naming what is not known yet is handed back
        in ``later`` instead of being rejected (the first pass over a file). A ``Refused``
        line is looked up only: a duplicate if stored before, else rejected."""
        results: list[LineResult] = []
        audit: list[AuditEvent] = []
        later: list[Parsed] = []
        refused = [item for item in items if isinstance(item, Refused)]
        chunk = [item for item in items if not isinstance(item, Refused)] if refused else cast(Sequence[Parsed], items)
        # Every line's event, the refused ones' too: the stores find their dedupe keys.
        named = [*chunk, *((item.line, item.event) for item in refused)] if refused else chunk
        self.consents.deferring = self.erasures.deferring = self.rights.deferring = defer
        # From each model's __dict__: getattr on a field a model lacks (a confirmation's
        # insurance number) goes through pydantic's __getattr__ and an AttributeError.
        found = self.subjects.prefetch(
            (e.__dict__["email"], e.__dict__.get("insurance_number")) for _, e in named if e.__dict__.get("email")
        )
        self.consents.begin_chunk((e for _, e in named if e.type.startswith("consent.")), {s.id for s in found})  # type: ignore[misc]  # the type's prefix picks the store's own events
        self.bookings.begin_chunk(e for _, e in named if e.type.startswith("booking."))
        self.orders.begin_chunk(e for _, e in named if e.type.startswith("isic."))
        self.erasures.begin_chunk(e for _, e in named if e.type.startswith("erasure."))
        self.held.begin_chunk(e for _, e in named if e.type.startswith(("ident.", "call.")))  # type: ignore[misc]  # the type's prefix picks the store's own events
        self.rights.begin_chunk(e for _, e in named if e.type.startswith("rights."))
        for item in refused:
            store = self.stores[item.event.type.split(".")[0]]
            # Every store keeps its lines' dedupe keys (by event) and those stored before.
            stored = store.keys[id(item.event)] in store.seen
            results.append(
                LineResult(item.line, "duplicate") if stored else LineResult(item.line, "rejected", item.reason)
            )
        for number, event in chunk:
            store = self.stores[event.type.split(".")[0]]
            if store is not self.consents:
                # The other stores read subjects through the ORM as well (an erasure request
                # finds its subject by a query): the subjects written so far must be there.
                self.subjects.write()
            try:
                applied = store.apply(event)
            except REJECTIONS as exc:
                if defer and isinstance(exc, NotYetKnown):
                    later.append((number, event))
                    continue
                if isinstance(exc, NotYetKnown) and isinstance(store, ReceiptStore) and store.keep(event):
                    # Its booking or order comes in a later file or request: applied then.
                    results.append(LineResult(number, "pending", f"{exc}: kept, and applied when it arrives"))
                    detail = f"line {number}: {event.type} {store.ref_of(event)}"
                    audit.append(AuditEvent("intake.pending", "kept", detail=detail))
                    continue
                results.append(LineResult(number, "rejected", str(exc)))
                audit.append(AuditEvent("intake.rejected", "rejected", detail=f"line {number}: {exc}"))
                continue
            results.append(LineResult(number, applied.outcome, applied.reason))
            if applied.audit is not None:
                audit.append(applied.audit)
        for kept in (self.bookings, self.orders):
            audit += self._apply_pending(kept)
        self.subjects.write()
        for store in {id(s): s for s in self.stores.values()}.values():  # each store once
            store.end_chunk()
        return ChunkApplied(results, audit, later)


def _parse_kept(line: str) -> IntakeEvent:
    """A kept line as it was validated when it arrived (the clock's checks then, not now)."""
    return EVENT_ADAPTER.validate_json(line, context={LENIENT: True})


def apply_lines(
    session: Session,
    key: bytes,
    lines: Iterable[str | bytes],
    now: datetime,
    service_points: Collection[str] = (),
    base_dir: Path | None = None,
    document_key: bytes | None = None,
    max_document_bytes: int = 10 * 1024 * 1024,
) -> Intake:
    """Validate and apply every line in one transaction; the results (one per non-blank
    line) and the audit events to write. No commit, no audit row written.

    `service_points` are the ids a branch booking may name (``settings.timify.service_points``);
    documents are read from paths relative to `base_dir` and stored encrypted with
    `document_key`. A file too large for one transaction goes through
    ``flows.intake.import_lines``, which commits chunk by chunk.
    """
    context = validation_context(now, service_points, base_dir, max_document_bytes)
    results: list[LineResult] = []
    parsed: list[Parsed | Refused] = []
    for item in parse_lines(lines, context):
        if isinstance(item, LineResult):
            results.append(item)
        else:
            parsed.append(item)
    applier = Applier(session, key, document_key)
    audit: list[AuditEvent] = []
    later: list[Parsed] = []
    for start in range(0, len(parsed), CHUNK):
        applied = applier.apply(parsed[start : start + CHUNK], defer=True)
        results += applied.results
        audit += applied.audit
        later += applied.later
    later = retry_order(later)
    for start in range(0, len(later), CHUNK):
        applied = applier.apply(later[start : start + CHUNK], defer=False)
        results += applied.results
        audit += applied.audit
    applier.close()
    results.sort(key=lambda r: r.line)
    return Intake(results, audit)
