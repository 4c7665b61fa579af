"""Consent records (one per subject and list) and their events, with proof of consent.

The double-opt-in life cycle::

    pending --confirm--> confirmed --withdraw--> withdrawn
       |                                            |
       +--withdraw--> withdrawn     signup again ---+--> pending
       +--expire----> expired   --- signup again ------> pending

    awaiting_signup --signup dated before the confirmation--> confirmed

Only ``confirmed`` ever leaves the controller; ``pending`` expires after the list's period.
``awaiting_signup`` is a confirmation whose sign-up has not arrived (another file or
request): kept in the history for the sign-up, and expired like an unconfirmed sign-up.

Events are applied by their time (``at``), not by when they arrive: a record is what its
event history (``ConsentEvent``) gives when replayed in event-time order (``replay``), so
files that arrive late or out of order, or twice, end in the same state and the same proof.
At the same instant a sign-up comes before a confirmation and a confirmation before a
withdrawal (the stricter reading wins), then the controller's own expiry and erasure.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from operator import attrgetter
from typing import Any

from sqlalchemy import Index, String, UniqueConstraint, func, tuple_, type_coerce
from sqlalchemy import select as sa_select
from sqlmodel import Field, Relationship, Session, SQLModel, col, select

from models.db import PlainRow, insert_many, skip_locked, write_plain_rows
from models.restriction import restricted_subject
from models.subjects import DataSubject
from models.types import BERLIN, UTCDateTime, classify, new_id, unix_seconds, utcnow


class ConsentList(StrEnum):
    newsletter = "newsletter"
    service_offers = "service_offers"


class ConsentState(StrEnum):
    pending = "pending"
    confirmed = "confirmed"
    withdrawn = "withdrawn"
    expired = "expired"
    # Confirmations only, their sign-up not here yet (``intake.consent``); never sent anywhere.
    awaiting_signup = "awaiting_signup"


# What expires after the list's opt-in period: the proof of a double opt-in never completed.
UNCONFIRMED = (ConsentState.pending, ConsentState.awaiting_signup)


class EventKind(StrEnum):
    signup = "signup"
    confirm = "confirm"
    withdraw = "withdraw"
    expire = "expire"
    # The subject's data was erased at this time (``models.erasure``): nothing dated at or
    # before it counts again. Written by intake when an erased person comes back, as the
    # subject row's ``erased_at`` is cleared then.
    erase = "erase"


# Order of events at the same instant: the person's steps in the order they can happen,
# a withdrawal last among them (the stricter reading), then the controller's decisions.
RANK: dict[str, int] = {
    EventKind.signup: 0,
    EventKind.confirm: 1,
    EventKind.withdraw: 2,
    EventKind.expire: 3,
    EventKind.erase: 4,
}


class WithdrawChannel(StrEnum):
    email = "email"
    portal = "portal"
    newsletter_link = "newsletter-link"


class ConsentRecord(SQLModel, table=True):
    __tablename__ = "consent"
    # The sync's reads of a list's changes after its cursor (ordered by the change number)
    # find the list in this index, without a row lookup per change of the other list.
    # Not (list_name, change_seq): without statistics SQLite would then answer every query
    # naming a list (the lapsed consents, the expiry) by that index, not the state's.
    __table_args__ = (
        UniqueConstraint("subject_id", "list_name"),
        Index("ix_consent_change_list", "change_seq", "list_name"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    # No index of its own: the unique key (subject_id, list_name) starts with it.
    subject_id: uuid.UUID = Field(foreign_key="data_subject.id")
    list_name: str = Field(max_length=40)
    state: str = Field(max_length=20, index=True)
    signup_at: datetime = Field(sa_type=UTCDateTime, index=True)
    signup_ip: str | None = Field(default=None, max_length=45)
    source: str | None = Field(default=None, max_length=500)
    policy_version: str | None = Field(default=None, max_length=100)
    confirm_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    confirm_ip: str | None = Field(default=None, max_length=45)
    withdrawn_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    withdraw_channel: str | None = Field(default=None, max_length=20)
    expired_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Monotonic change number (models.cursors.next_seq); the sync pushes seq > its cursor.
    change_seq: int = Field(default=0)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)

    # Declared so the unit of work inserts the subject before its consent.
    subject: DataSubject = Relationship()


class ConsentEvent(SQLModel, table=True):
    """What happened, as it was handed over; the history behind a ConsentRecord."""

    __tablename__ = "consent_event"

    id: int | None = Field(default=None, primary_key=True)
    consent_id: uuid.UUID = Field(foreign_key="consent.id", index=True)
    kind: str = Field(max_length=20)
    at: datetime = Field(sa_type=UTCDateTime)
    ip: str | None = Field(default=None, max_length=45)
    channel: str | None = Field(default=None, max_length=20)
    source: str | None = Field(default=None, max_length=500)
    policy_version: str | None = Field(default=None, max_length=100)
    # Hash of the event's content: re-importing the same line is recognised and skipped.
    dedupe_key: str = Field(unique=True, max_length=64)
    recorded_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)

    consent: ConsentRecord = Relationship()


# Intake writes consent records and events by the thousand: as plain rows with Core
# (``Record``, ``write_records``, ``insert_events``), without an ORM object each, whose
# attribute events, unit of work and identity map cost more than the rest of a line.
_RECORD_TABLE = ConsentRecord.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
_EVENT_TABLE = ConsentEvent.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
RECORD_COLUMNS: tuple[str, ...] = tuple(c.key for c in _RECORD_TABLE.columns)
EVENT_COLUMNS = ("consent_id", "kind", "at", "ip", "channel", "source", "policy_version", "dedupe_key", "recorded_at")
_INSERT_EVENT = _EVENT_TABLE.insert()
# What a later event can change in a record (its id, subject and list stay).
_CHANGING = tuple(c for c in RECORD_COLUMNS if c not in ("id", "subject_id", "list_name"))


class Record(PlainRow):
    """A consent record as intake reads and writes it: the ``consent`` columns as plain
    attributes (``settle`` takes it as it takes a ConsentRecord), and whether it is in the
    database yet (``stored``)."""

    __slots__ = RECORD_COLUMNS
    # The columns, for the type checker (a column added to the table is in the slots too).
    id: uuid.UUID
    subject_id: uuid.UUID
    list_name: str
    state: str
    signup_at: datetime
    signup_ip: str | None
    source: str | None
    policy_version: str | None
    confirm_at: datetime | None
    confirm_ip: str | None
    withdrawn_at: datetime | None
    withdraw_channel: str | None
    expired_at: datetime | None
    change_seq: int
    updated_at: datetime

    @classmethod
    def new(cls, subject_id: uuid.UUID, list_name: str, signup_at: datetime, now: datetime | None = None) -> Record:
        """A record not in the database yet, pending, as a ConsentRecord would start;
        `now` (default: the clock) is its ``updated_at``."""
        values = dict.fromkeys(RECORD_COLUMNS)
        values.update(
            id=new_id(),
            subject_id=subject_id,
            list_name=str(list_name),
            state=ConsentState.pending.value,
            signup_at=signup_at,
            change_seq=0,
            updated_at=now or utcnow(),
        )
        return cls(False, values.items())


def load_records(session: Session, subject_ids: Collection[uuid.UUID]) -> list[Record]:
    """The consent records of these subjects, as ``Record``s."""
    ids = list(subject_ids)
    records = []
    for start in range(0, len(ids), 1000):
        rows = session.connection().execute(
            sa_select(*_RECORD_TABLE.columns).where(_RECORD_TABLE.c.subject_id.in_(ids[start : start + 1000]))
        )
        records += [Record(True, zip(RECORD_COLUMNS, row, strict=True)) for row in rows]
    return records


def write_records(session: Session, records: Iterable[Record]) -> None:
    """Insert the new ones of `records`, update the stored ones (every changing column); each
    with one statement for all. Their subjects must be in the database (flushed) first."""
    write_plain_rows(session, records, _RECORD_TABLE, RECORD_COLUMNS, _CHANGING)


def insert_events(session: Session, rows: Sequence[Sequence[Any]]) -> None:
    """Insert ``consent_event`` rows (tuples in ``EVENT_COLUMNS`` order, ``Step.row``) with
    one statement; their records must be in the database first."""
    insert_many(session, _INSERT_EVENT, EVENT_COLUMNS, rows)


classify(
    ConsentRecord,
    personal=["signup_ip", "confirm_ip", "source"],
    pseudonymous=["id", "subject_id"],
    not_personal=[
        "list_name",
        "state",
        "signup_at",
        "policy_version",
        "confirm_at",
        "withdrawn_at",
        "withdraw_channel",
        "expired_at",
        "change_seq",
        "updated_at",
    ],
)
classify(
    ConsentEvent,
    personal=["ip", "source"],
    pseudonymous=["consent_id", "dedupe_key"],
    not_personal=["id", "kind", "at", "channel", "policy_version", "recorded_at"],
)


def expiry_due(signup_at: datetime, days: int) -> datetime:
    """When an unconfirmed sign-up must be gone: `days` calendar days later in Berlin.

    Calendar days, not 24-hour periods: across a daylight-saving change the wall-clock time
    stays the same (aware datetime arithmetic in ``zoneinfo`` is wall-clock arithmetic).

    >>> from datetime import UTC
    >>> expiry_due(datetime(2026, 3, 1, 11, 0, tzinfo=UTC), 30).isoformat()
    '2026-03-31T10:00:00+00:00'
    """
    local = signup_at.astimezone(BERLIN)
    return (local + timedelta(days=days)).astimezone(signup_at.tzinfo)


class TransitionError(ValueError):
    """The event does not fit the record's state; the reason is safe to show."""


def _event(record: ConsentRecord, kind: EventKind, at: datetime, dedupe_key: str, **kw):
    return ConsentEvent(consent_id=record.id, kind=kind, at=at, dedupe_key=dedupe_key, **kw)


@dataclass(frozen=True)
class Step:
    """One event of a record's history, as ``replay`` reads it (a ConsentEvent's columns)."""

    kind: str
    at: datetime
    key: str  # the dedupe key: the last tie-breaker, so equal times order the same everywhere
    ip: str | None = None
    channel: str | None = None
    source: str | None = None
    policy_version: str | None = None

    @property
    def order(self) -> tuple[datetime, int, str]:
        """Where the step goes in event time: by time, by kind at the same instant, then by key."""
        # A StrEnum member hashes as its value: the stored text finds it without EventKind(),
        # whose lookup cost more than the rest of a replay's sort.
        return (self.at, RANK[self.kind], self.key)

    def row(self, consent_id: uuid.UUID, recorded_at: datetime) -> tuple:
        """The ``consent_event`` row that records this step in the history of `consent_id`,
        in ``EVENT_COLUMNS`` order (``insert_events`` takes many at once)."""
        return (
            consent_id,
            str(self.kind),
            self.at,
            self.ip,
            self.channel,
            self.source,
            self.policy_version,
            self.key,
            recorded_at,
        )

    def without_personal_data(self) -> Step:
        """The step as it may be kept where the proof is gone (expired, erased)."""
        return Step(self.kind, self.at, self.key, None, self.channel, None, self.policy_version)


# The state of a record at an erasure cut: whatever the record holds stays (the erasure
# left it pseudonymous), and only a new sign-up starts anything again.
ENDED = "ended"


@dataclass
class Decision:
    """What a record's history says: its state and proof, and which events decided them.

    Compared by state and proof only. ``state`` None: nothing known yet; ``ENDED``: the
    record stays as the erasure left it. A withdrawal with no sign-up before it gives
    ``withdrawn`` without a sign-up (``signup_at`` None).
    """

    state: str | None = None
    signup_at: datetime | None = None
    signup_ip: str | None = None
    source: str | None = None
    policy_version: str | None = None
    confirm_at: datetime | None = None
    confirm_ip: str | None = None
    withdrawn_at: datetime | None = None
    withdraw_channel: str | None = None
    expired_at: datetime | None = None
    decided: Step | None = field(default=None, compare=False)  # the last event that changed it

    @property
    def since(self) -> datetime | None:
        """When the current decision was taken."""
        return self.decided.at if self.decided else None


PROOF_FIELDS = tuple(f.name for f in fields(Decision) if f.compare)
_proof = attrgetter(*PROOF_FIELDS)


def _step(d: Decision, s: Step) -> None:
    """Apply one event, in event-time order, to what the events before it gave."""
    if s.kind == EventKind.signup:
        if d.state == ConsentState.confirmed:
            return  # signed up again while subscribed: nothing to confirm
        # A new double-opt-in cycle (also over a pending one: the newest mail's link counts).
        d.state = ConsentState.pending
        d.signup_at, d.signup_ip, d.source, d.policy_version = s.at, s.ip, s.source, s.policy_version
        d.confirm_at = d.confirm_ip = d.withdrawn_at = d.withdraw_channel = d.expired_at = None
    elif s.kind == EventKind.confirm:
        if d.state != ConsentState.pending:
            return  # a confirmation needs a sign-up before it, with no withdrawal in between
        d.state, d.confirm_at, d.confirm_ip = ConsentState.confirmed, s.at, s.ip
    elif s.kind == EventKind.withdraw:
        if d.state not in (None, ConsentState.pending, ConsentState.confirmed):
            return  # the first withdrawal ended the cycle; an erased or expired one has none
        # From nothing, too: a sign-up dated before it that arrives later must not subscribe.
        d.state, d.withdrawn_at, d.withdraw_channel = ConsentState.withdrawn, s.at, s.channel
    elif s.kind == EventKind.expire:
        if d.state not in (ConsentState.pending, ConsentState.confirmed):
            return
        # The expiry erased this cycle's proof; a confirmation dated before it that arrives
        # later is older than that decision and does not bring the cycle back.
        d.state, d.expired_at = ConsentState.expired, s.at
        d.signup_ip = d.confirm_ip = d.source = None
    else:
        return
    d.decided = s


def _order(s: Step) -> tuple[datetime, int, str]:
    # Step.order without the property's second call: replay sorts every line's history twice.
    return (s.at, RANK[s.kind], s.key)


def cut_of(steps: Iterable[Step], erased_at: datetime | None = None) -> datetime | None:
    """The latest erasure of the record's subject (an ``erase`` event, or the subject's
    ``erased_at`` while it is erased): nothing dated at or before it counts."""
    cuts = [s.at for s in steps if s.kind == EventKind.erase]
    if erased_at is not None:
        cuts.append(erased_at)
    return max(cuts, default=None)


def replay(steps: Iterable[Step], cut: datetime | None = None) -> Decision:
    """What the history says, whatever order its events were stored in.

    Events dated at or before `cut` are ignored. If the record had any (it existed when its
    subject was erased), the replay starts from ``ENDED``; a record begun after the erasure
    starts from nothing.

    >>> t = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
    >>> history = [Step("withdraw", t + timedelta(hours=2), "w", channel="portal"),
    ...            Step("confirm", t + timedelta(hours=1), "c", ip="192.0.2.2"),
    ...            Step("signup", t, "s", ip="192.0.2.1")]
    >>> str(replay(history).state)
    'withdrawn'
    """
    ordered = sorted(steps, key=_order)
    if not ordered:  # a record's first line: nothing known yet, whatever the cut
        return Decision()
    if cut is not None:
        existed = any(s.at <= cut for s in ordered)
        ordered = [s for s in ordered if s.at > cut]
    d = Decision(state=ENDED if cut is not None and existed else None)
    for s in ordered:
        _step(d, s)
    return d


def settle(record: ConsentRecord | Record, d: Decision, seq: int | None, now: datetime | None = None) -> None:
    """Write a replayed decision to the record; `seq` None keeps its change number (nothing
    a processor needs to hear about). `now` (default: the clock) is its ``updated_at`` then."""
    assert d.state not in (None, ENDED)
    if type(record) is Record:
        # Plain attributes: set, without reading each one first.
        for name, value in zip(PROOF_FIELDS, _proof(d), strict=True):
            setattr(record, name, value)
        if record.signup_at is None:  # a withdrawal with no sign-up known: the column needs a time
            record.signup_at = d.withdrawn_at
        if seq is not None:
            _touch(record, seq, now)
        return
    values = {name: getattr(d, name) for name in PROOF_FIELDS}
    if values["signup_at"] is None:  # a withdrawal with no sign-up known: the column needs a time
        values["signup_at"] = d.withdrawn_at
    for name, value in values.items():
        if getattr(record, name) != value:  # setting an ORM attribute costs, even to the same value
            setattr(record, name, value)
    if seq is not None:
        _touch(record, seq, now)


def describe_time(at: datetime) -> str:
    """A time for a reason: UTC to the second, nothing else.

    >>> describe_time(datetime(2026, 5, 4, 10, 0, 30, 5, tzinfo=UTC))
    '2026-05-04T10:00:30Z'
    """
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def apply_withdraw(record: ConsentRecord, at: datetime, channel: str, seq: int, dedupe_key: str) -> ConsentEvent | None:
    """Consent withdrawn (by e-mail, in the portal, or by the newsletter's link).

    None when nothing changes: no consent stands, or the withdrawal is dated before the
    sign-up of the current cycle (it ended an earlier one, as ``replay`` reads it). A
    confirmation awaiting its sign-up is withdrawn whatever its time: the sign-up, dated
    before the withdrawal when it arrives, must not confirm (``replay`` reads the history so).
    """
    if record.state == ConsentState.awaiting_signup:
        record.signup_at = at  # as for a withdrawal with no sign-up known (``settle``)
    elif record.state not in (ConsentState.pending, ConsentState.confirmed) or at < record.signup_at:
        return None
    record.state = ConsentState.withdrawn
    record.withdrawn_at, record.withdraw_channel = at, channel
    _touch(record, seq)
    return _event(record, EventKind.withdraw, at, dedupe_key, channel=channel)


def withdrawn_without_signup(
    subject_id: uuid.UUID, list_name: str, at: datetime, channel: str, dedupe_key: str, now: datetime
) -> tuple[ConsentRecord, ConsentEvent]:
    """A withdrawal on a list the subject has no consent on (an objection to everything):
    the record, withdrawn, and its event. Kept so that a sign-up dated before it that arrives
    later does not subscribe (``replay``); no change number, as nothing went anywhere."""
    record = ConsentRecord(
        subject_id=subject_id,
        list_name=list_name,
        state=ConsentState.withdrawn,
        signup_at=at,  # as for a withdrawal with no sign-up known (``settle``)
        withdrawn_at=at,
        withdraw_channel=channel,
        updated_at=now,
    )
    return record, _event(record, EventKind.withdraw, at, dedupe_key, channel=channel)


def apply_expire(record: ConsentRecord, at: datetime, dedupe_key: str) -> ConsentEvent:
    """An unconfirmed sign-up ran out: the record stays, its personal data goes.

    The IP addresses of this cycle are dropped from the record (the events' are dropped by
    the caller); what remains says only that a sign-up existed and when it expired.
    """
    if record.state not in UNCONFIRMED:
        raise TransitionError(f"only unconfirmed sign-ups expire, not {record.state}")
    record.state = ConsentState.expired
    record.expired_at = at
    record.signup_ip = record.confirm_ip = None
    record.source = None
    record.updated_at = at
    return _event(record, EventKind.expire, at, dedupe_key)


def _touch(record: ConsentRecord | Record, seq: int, now: datetime | None = None) -> None:
    record.change_seq = seq
    record.updated_at = now or utcnow()


# What a push needs, as plain rows: loading ORM objects cost more than the call itself. The
# two times are whole Unix seconds already (what CleverReach takes), computed by the
# database (``models.types.unix_seconds``: truncated, as int(timestamp()) does).
# A consent record's id as the database holds it (32 hex digits on SQLite, a uuid on
# PostgreSQL): the push names a record by it, and parsing 100,000 of them into UUIDs per
# batch costs more than the rest of the row.
_RAW_ID = type_coerce(ConsentRecord.id, String).label("consent_id")

PUSH_COLUMNS: tuple[Any, ...] = (
    ConsentRecord.state,
    ConsentRecord.change_seq,
    unix_seconds(col(ConsentRecord.signup_at)).label("registered"),
    ConsentRecord.signup_ip,
    unix_seconds(col(ConsentRecord.confirm_at)).label("activated"),
    ConsentRecord.confirm_ip,
    ConsentRecord.source,
    ConsentRecord.policy_version,
    col(DataSubject.id).label("subject_id"),
    DataSubject.pseudonym,
    DataSubject.email,
    DataSubject.insurance_number,
    DataSubject.salutation,
    DataSubject.first_name,
    DataSubject.last_name,
    _RAW_ID,
)


def changes_ahead(session: Session, list_name: str, after_seq: int, limit: int) -> list:
    """A list's next `limit` changes after `after_seq` as the write-ahead needs them
    (consent_id, subject_id, state, change_seq): one table, no join, a fraction of
    ``changed_since``'s cost."""
    query = (
        select(_RAW_ID, ConsentRecord.subject_id, ConsentRecord.state, ConsentRecord.change_seq)
        .where(ConsentRecord.list_name == list_name, ConsentRecord.change_seq > after_seq)
        .order_by(col(ConsentRecord.change_seq))
        .limit(limit)
    )
    return list(session.connection().execute(query).all())


def stream_bounds(session: Session, list_name: str, after_seq: int, limit: int) -> tuple[int, int | None]:
    """How many of a list's changes follow `after_seq`, at most `limit`, and the last one's
    seq: the bounds of the next batch, read from the change index alone."""
    changes = (
        sa_select(col(ConsentRecord.change_seq))
        .where(col(ConsentRecord.list_name) == list_name, col(ConsentRecord.change_seq) > after_seq)
        .order_by(col(ConsentRecord.change_seq))
        .limit(limit)
        .subquery()
    )
    count, last = session.connection().execute(sa_select(func.count(), func.max(changes.c.change_seq))).one()
    return int(count), last


def confirmed_between(dialect: str) -> str:
    """SQL of the subjects of a list's consents confirmed among its changes after :after up
    to :through (and :list): who a push of those changes may carry to CleverReach
    (``changed_since`` reads the same records whole). For
    ``models.recipients.record_may_hold_selected``."""
    # "+state" keeps SQLite off the state index: without statistics it takes the state for
    # the narrower term and reads every confirmed consent (0.1 s for a 1,000-change sync).
    state = "+state" if dialect == "sqlite" else "state"
    return (
        "SELECT subject_id FROM consent WHERE list_name = :list AND change_seq > :after"
        f" AND change_seq <= :through AND {state} = '{ConsentState.confirmed}'"
    )


def push_rows_by_ids(session: Session, list_name: str, consent_ids: Sequence[str]) -> list:
    """Rows (PUSH_COLUMNS) of these consent records of a list, in change order: what a run
    left to retry. An id that is not a consent record's is skipped."""
    ids = []
    for value in consent_ids:
        try:
            ids.append(uuid.UUID(str(value)))
        except ValueError:
            continue
    query = (
        select(*PUSH_COLUMNS)
        .join(DataSubject, col(DataSubject.id) == col(ConsentRecord.subject_id))
        .where(ConsentRecord.list_name == list_name, col(ConsentRecord.id).in_(ids))
        .order_by(col(ConsentRecord.change_seq))
    )
    return list(session.connection().execute(query).all()) if ids else []


def changed_since(session: Session, list_name: str, after_seq: int, limit: int) -> list:
    """Rows (PUSH_COLUMNS) of a list's records changed after `after_seq`, oldest first.

    Executed on the session's connection (Core): plain rows need none of the ORM's loading.
    """
    query = (
        select(*PUSH_COLUMNS)
        .join(DataSubject, col(DataSubject.id) == col(ConsentRecord.subject_id))
        .where(ConsentRecord.list_name == list_name, ConsentRecord.change_seq > after_seq)
        .order_by(col(ConsentRecord.change_seq))
        .limit(limit)
    )
    return list(session.connection().execute(query).all())


def count_changed_since(session: Session, list_name: str, after_seq: int) -> int:
    """How many of a list's records changed after `after_seq`."""
    return session.exec(
        select(func.count()).where(ConsentRecord.list_name == list_name, ConsentRecord.change_seq > after_seq)
    ).one()


LAPSED_STATES = (ConsentState.pending, ConsentState.withdrawn, ConsentState.expired)


def lapsed_subject_ids(list_name: str, changed_upto: int | None = None):
    """A subquery: the subjects whose consent to this list does not stand (pending again,
    withdrawn, expired), optionally only those last changed at or before `changed_upto`. A
    subject has one record per list, so none of them is confirmed.

    Listed by state (an index), not as "not confirmed": the lapsed are a sliver of a list,
    and a query driven by them reads that sliver instead of every confirmed subscriber.
    """
    query = select(ConsentRecord.subject_id).where(
        ConsentRecord.list_name == list_name,
        col(ConsentRecord.state).in_(LAPSED_STATES),
    )
    if changed_upto is not None:
        query = query.where(ConsentRecord.change_seq <= changed_upto)
    return query


def lapsed_among(session: Session, list_name: str, subject_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """The subjects among `subject_ids` whose consent to this list does not stand."""
    # Looked up by the (subject, list) key and the state compared here: with the state in
    # the query, SQLite reads every record in that state through the state index instead.
    lapsed: set[uuid.UUID] = set()
    for start in range(0, len(subject_ids), 1000):
        rows = session.connection().execute(
            select(ConsentRecord.subject_id, ConsentRecord.state).where(
                col(ConsentRecord.subject_id).in_(subject_ids[start : start + 1000]),
                ConsentRecord.list_name == list_name,
            )
        )
        lapsed.update(subject for subject, state in rows if state in LAPSED_STATES)
    return lapsed


def expiry_candidates(
    session: Session,
    list_name: str,
    signed_up_before: datetime,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[ConsentRecord]:
    """Unconfirmed records of a list (pending, or a confirmation awaiting its sign-up) begun
    before a bound, in (signup_at, id) order; not a restricted person's (kept while the
    restriction lasts, Art. 18).

    Claimed (``skip_locked``): of two workers expiring at once, each takes other records
    (the second to expire one would fail on the expiry event's dedupe key).
    """
    query = select(ConsentRecord).where(
        ConsentRecord.list_name == list_name,
        col(ConsentRecord.state).in_(UNCONFIRMED),
        ConsentRecord.signup_at <= signed_up_before,
        ~restricted_subject(col(ConsentRecord.subject_id)),
    )
    if after is not None:
        query = query.where(tuple_(col(ConsentRecord.signup_at), col(ConsentRecord.id)) > after)
    query = query.order_by(col(ConsentRecord.signup_at), col(ConsentRecord.id)).limit(limit)
    return list(session.exec(skip_locked(query, ConsentRecord)).all())
