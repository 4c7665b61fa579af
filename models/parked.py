"""Parked items: records a job could not deliver, kept aside so the rest of the stream goes on.

One row per (job, record id). A record that failed for good (a 4xx other than auth, our own
validation) is parked until an operator retries or drops it; one that failed for a
retriable reason (5xx, timeout, 429, a dropped connection) is tried again by the job's next
run, first, without holding back the records after it. A parked record that later goes
through is marked resolved. Ids and reasons only: never a person's data (the reason is a
``ProcessorError``'s names and numbers, or our own check's message).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, Session, SQLModel, col, select

from models.types import UTCDateTime, classify, new_id

MAX_REASON = 300


class ParkState(enum.StrEnum):
    retry = "retry"  # retriable: the job's next run tries it again by itself
    parked = "parked"  # for good: waits for `psync parked retry` or `drop`
    resolved = "resolved"  # delivered by a later run
    dropped = "dropped"  # an operator decided it is not to be delivered (audited)


OPEN = (ParkState.retry, ParkState.parked)


class ParkedItem(SQLModel, table=True):
    __tablename__ = "parked_item"
    __table_args__ = (UniqueConstraint("job", "record_id"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    job: str = Field(max_length=60, index=True)
    record_id: str = Field(max_length=100)
    processor: str = Field(default="", max_length=40)
    operation: str = Field(default="", max_length=60)
    reason: str = Field(default="", max_length=MAX_REASON)
    state: str = Field(default=ParkState.parked, max_length=10, index=True)
    attempts: int = 0
    first_tried_at: datetime = Field(sa_type=UTCDateTime)
    last_tried_at: datetime = Field(sa_type=UTCDateTime)
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    drop_reason: str | None = Field(default=None, max_length=MAX_REASON)


classify(
    ParkedItem,
    pseudonymous=["record_id"],
    not_personal=[
        "id",
        "job",
        "processor",
        "operation",
        "reason",
        "state",
        "attempts",
        "first_tried_at",
        "last_tried_at",
        "closed_at",
        "drop_reason",
    ],
)


def park(
    session: Session,
    job: str,
    record_id: str,
    *,
    retriable: bool,
    processor: str,
    operation: str,
    reason: str,
    now: datetime,
) -> ParkedItem:
    """Park (or park again) a record; counts the attempt."""
    item = session.exec(select(ParkedItem).where(ParkedItem.job == job, ParkedItem.record_id == record_id)).first()
    if item is None:
        item = ParkedItem(job=job, record_id=record_id, first_tried_at=now, last_tried_at=now)
        session.add(item)
    elif item.state not in OPEN:
        item.first_tried_at, item.attempts = now, 0  # a new failure after it was resolved
    item.state = ParkState.retry if retriable else ParkState.parked
    item.processor, item.operation, item.reason = processor, operation[:60], reason[:MAX_REASON]
    item.attempts += 1
    item.last_tried_at, item.closed_at, item.drop_reason = now, None, None
    return item


def due_for_retry(session: Session, job: str) -> list[str]:
    """Record ids the job's next run tries again first (retriable, or retried by an operator)."""
    query = select(ParkedItem.record_id).where(ParkedItem.job == job, ParkedItem.state == ParkState.retry)
    return list(session.exec(query.order_by(col(ParkedItem.first_tried_at))))


def resolve(session: Session, job: str, record_ids: Iterable[str], now: datetime) -> int:
    """Mark open parked items of these records delivered; returns how many were open.
    `record_ids` is read only when the job has open items."""
    # The job's open items, then the delivered among them: open items are few, a batch's
    # records many (and more than a statement may bind, at 100,000 a batch).
    items = session.exec(select(ParkedItem).where(ParkedItem.job == job, col(ParkedItem.state).in_(OPEN))).all()
    wanted = set(record_ids) if items else set()
    done = [item for item in items if item.record_id in wanted]
    for item in done:
        item.state, item.closed_at = ParkState.resolved, now
    return len(done)


def open_items(session: Session, job: str | None = None) -> list[ParkedItem]:
    """Parked and to-retry items, oldest first (``psync parked list``)."""
    query = select(ParkedItem).where(col(ParkedItem.state).in_(OPEN))
    if job:
        query = query.where(ParkedItem.job == job)
    return list(session.exec(query.order_by(col(ParkedItem.first_tried_at))))


def get_item(session: Session, item_id: uuid.UUID | str) -> ParkedItem:
    """The item, or LookupError."""
    try:
        key = item_id if isinstance(item_id, uuid.UUID) else uuid.UUID(str(item_id))
    except ValueError:
        raise LookupError("not a parked item id (8-4-4-4-12 hex digits)") from None
    item = session.get(ParkedItem, key)
    if item is None:
        raise LookupError("no parked item with this id")
    return item


def retry_later(item: ParkedItem) -> None:
    """An operator asks for another try: the job's next run takes it first."""
    if item.state not in OPEN:
        raise ValueError(f"the item is {item.state}, not parked")
    item.state = ParkState.retry


def drop(item: ParkedItem, reason: str, now: datetime) -> None:
    """An operator decides the record is not to be delivered; the reason is required."""
    if item.state not in OPEN:
        raise ValueError(f"the item is {item.state}, not parked")
    from models.erasure import check_free_text  # the officer's free-text rule: no personal data

    reason = check_free_text(" ".join((reason or "").split()), "reason", limit=MAX_REASON)
    if not reason:
        raise ValueError("a reason is required to drop a parked item")
    item.state, item.closed_at, item.drop_reason = ParkState.dropped, now, reason[:MAX_REASON]
