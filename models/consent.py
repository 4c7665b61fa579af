"""Consent records (one per subject and list) and their events, with proof of consent.

The double-opt-in life cycle::

    pending --confirm--> confirmed --withdraw--> withdrawn
       |                                            |
       +--withdraw--> withdrawn     signup again ---+--> pending
       +--expire----> expired   --- signup again ------> pending

Only ``confirmed`` ever leaves the controller; ``pending`` expires after the list's period.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from sqlalchemy import UniqueConstraint, extract, func, tuple_
from sqlmodel import Field, Relationship, Session, SQLModel, select

from models.db import skip_locked
from models.subjects import DataSubject

from models.types import UTCDateTime, new_id, utcnow

BERLIN = ZoneInfo("Europe/Berlin")


class ConsentList(StrEnum):
    newsletter = "newsletter"
    service_offers = "service_offers"


class ConsentState(StrEnum):
    pending = "pending"
    confirmed = "confirmed"
    withdrawn = "withdrawn"
    expired = "expired"


class EventKind(StrEnum):
    signup = "signup"
    confirm = "confirm"
    withdraw = "withdraw"
    expire = "expire"


class WithdrawChannel(StrEnum):
    email = "email"
    portal = "portal"
    newsletter_link = "newsletter-link"


class ConsentRecord(SQLModel, table=True):
    __tablename__ = "consent"
    __table_args__ = (UniqueConstraint("subject_id", "list_name"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    subject_id: uuid.UUID = Field(foreign_key="data_subject.id", index=True)
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
    change_seq: int = Field(default=0, index=True)
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


def event_key(key: bytes, *parts: object) -> str:
    """The keyed dedupe key of an event: the same parts give the same key, so storing an
    event twice is recognised (ConsentEvent.dedupe_key is unique).

    >>> event_key(b"k", "expire", 1) == event_key(b"k", "expire", 1)
    True
    """
    payload = "|".join(map(str, parts)).encode()
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


class TransitionError(ValueError):
    """The event does not fit the record's state; the reason is safe to show."""


def _event(record: ConsentRecord, kind: EventKind, at: datetime, dedupe_key: str, **kw):
    return ConsentEvent(consent_id=record.id, kind=kind, at=at, dedupe_key=dedupe_key, **kw)


def apply_signup(
    record: ConsentRecord,
    at: datetime,
    ip: str,
    source: str,
    policy_version: str,
    seq: int,
    dedupe_key: str,
) -> ConsentEvent | None:
    """A (new or repeated) sign-up. Starts a new double-opt-in cycle unless confirmed.

    Returns the event to store, or None when nothing changes (already confirmed).
    """
    if record.state == ConsentState.confirmed:
        return None
    record.state = ConsentState.pending
    record.signup_at, record.signup_ip = at, ip
    record.source, record.policy_version = source, policy_version
    record.confirm_at = record.confirm_ip = None
    record.withdrawn_at = record.withdraw_channel = record.expired_at = None
    _touch(record, seq)
    return _event(
        record, EventKind.signup, at, dedupe_key, ip=ip, source=source,
        policy_version=policy_version,
    )  # fmt: skip


def apply_confirm(
    record: ConsentRecord | None, at: datetime, ip: str, seq: int, dedupe_key: str
) -> ConsentEvent | None:
    """The confirmation link was clicked. Only a pending sign-up can be confirmed."""
    if record is None:
        raise TransitionError("no sign-up to confirm for this list")
    if record.state == ConsentState.confirmed:
        return None
    if record.state != ConsentState.pending:
        raise TransitionError(f"sign-up is {record.state}; a new sign-up is needed")
    if at < record.signup_at:
        raise TransitionError("confirmation is earlier than the sign-up")
    record.state = ConsentState.confirmed
    record.confirm_at, record.confirm_ip = at, ip
    _touch(record, seq)
    return _event(record, EventKind.confirm, at, dedupe_key, ip=ip)


def apply_withdraw(
    record: ConsentRecord, at: datetime, channel: str, seq: int, dedupe_key: str
) -> ConsentEvent | None:
    """Consent withdrawn (by e-mail, in the portal, or by the newsletter's link)."""
    if record.state not in (ConsentState.pending, ConsentState.confirmed):
        return None
    record.state = ConsentState.withdrawn
    record.withdrawn_at, record.withdraw_channel = at, channel
    _touch(record, seq)
    return _event(record, EventKind.withdraw, at, dedupe_key, channel=channel)


def apply_expire(record: ConsentRecord, at: datetime, dedupe_key: str) -> ConsentEvent:
    """An unconfirmed sign-up ran out: the record stays, its personal data goes.

    The IP addresses of this cycle are dropped from the record (the events' are dropped by
    the caller); what remains says only that a sign-up existed and when it expired.
    """
    if record.state != ConsentState.pending:
        raise TransitionError(f"only pending sign-ups expire, not {record.state}")
    record.state = ConsentState.expired
    record.expired_at = at
    record.signup_ip = record.confirm_ip = None
    record.source = None
    record.updated_at = at
    return _event(record, EventKind.expire, at, dedupe_key)


def _touch(record: ConsentRecord, seq: int) -> None:
    record.change_seq = seq
    record.updated_at = utcnow()


# What a push needs, as plain rows: loading ORM objects cost more than the call itself. The
# two times are Unix seconds already (what CleverReach takes), computed by the database.
PUSH_COLUMNS = (
    ConsentRecord.state, ConsentRecord.change_seq,
    extract("epoch", ConsentRecord.signup_at).label("registered"), ConsentRecord.signup_ip,
    extract("epoch", ConsentRecord.confirm_at).label("activated"), ConsentRecord.confirm_ip,
    ConsentRecord.source, ConsentRecord.policy_version,
    DataSubject.id.label("subject_id"), DataSubject.pseudonym, DataSubject.email,
    DataSubject.insurance_number, DataSubject.salutation, DataSubject.first_name,
    DataSubject.last_name,
)  # fmt: skip


def changed_since(session: Session, list_name: str, after_seq: int, limit: int) -> list:
    """Rows (PUSH_COLUMNS) of a list's records changed after `after_seq`, oldest first.

    Executed on the session's connection (Core): plain rows need none of the ORM's loading.
    """
    query = (
        select(*PUSH_COLUMNS)
        .join(DataSubject, DataSubject.id == ConsentRecord.subject_id)
        .where(ConsentRecord.list_name == list_name, ConsentRecord.change_seq > after_seq)
        .order_by(ConsentRecord.change_seq)
        .limit(limit)
    )
    return list(session.connection().execute(query).all())


def count_changed_since(session: Session, list_name: str, after_seq: int) -> int:
    """How many of a list's records changed after `after_seq`."""
    return session.exec(
        select(func.count()).where(
            ConsentRecord.list_name == list_name, ConsentRecord.change_seq > after_seq
        )
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
        ConsentRecord.state.in_(LAPSED_STATES),  # type: ignore[attr-defined]
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
        rows = session.connection().execute(select(ConsentRecord.subject_id, ConsentRecord.state).where(
            ConsentRecord.subject_id.in_(subject_ids[start : start + 1000]),  # type: ignore[attr-defined]
            ConsentRecord.list_name == list_name,
        ))  # fmt: skip
        lapsed.update(subject for subject, state in rows if state in LAPSED_STATES)
    return lapsed


def expiry_candidates(
    session: Session,
    list_name: str,
    signed_up_before: datetime,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[ConsentRecord]:
    """Pending records of a list signed up before a bound, in (signup_at, id) order.

    Claimed (``skip_locked``): of two workers expiring at once, each takes other records
    (the second to expire one would fail on the expiry event's dedupe key).
    """
    query = select(ConsentRecord).where(
        ConsentRecord.list_name == list_name,
        ConsentRecord.state == ConsentState.pending,
        ConsentRecord.signup_at <= signed_up_before,
    )
    if after is not None:
        query = query.where(tuple_(ConsentRecord.signup_at, ConsentRecord.id) > after)
    query = query.order_by(ConsentRecord.signup_at, ConsentRecord.id).limit(limit)
    return list(session.exec(skip_locked(query, ConsentRecord)).all())
